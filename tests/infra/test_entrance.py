"""Checks for the entrance (portable_k3s.deploys.entrance): nginx forwards exactly the catalog's public apps."""

from __future__ import annotations

import re

import pytest


def _public_hostnames(inventory_host) -> set[str]:
    return {a["hostname"] for a in inventory_host.get("apps") or [] if a.get("public") and a.get("hostname")}


@pytest.mark.groups("entrance")
def test_nginx_runs_with_a_valid_config(host):
    assert host.service("nginx").is_running and host.service("nginx").is_enabled
    host.check_output("nginx -t -q")
    for port in (80, 443):
        assert host.socket(f"tcp://0.0.0.0:{port}").is_listening


@pytest.mark.groups("entrance")
def test_sni_whitelist_equals_the_public_apps(host, inventory_host):
    config = host.check_output("nginx -T 2>/dev/null")
    sni_map = config[config.index("map $ssl_preread_server_name"):]
    sni_map = sni_map[: sni_map.index("}")]
    listed = set(re.findall(r"^\s*(\S+)\s+cluster_https;", sni_map, re.MULTILINE))
    assert listed == _public_hostnames(inventory_host)


@pytest.mark.groups("entrance")
def test_tcp_apps_listen_and_the_entrance_holds_no_tls_keys_of_its_own(host, inventory_host):
    for app in inventory_host.get("apps") or []:
        if app.get("public") and app.get("tcp_port"):
            assert host.socket(f"tcp://0.0.0.0:{app['tcp_port']}").is_listening, app["name"]
    config = host.check_output("nginx -T 2>/dev/null")
    assert "ssl_certificate" not in config


@pytest.mark.groups("entrance")
def test_downtime_alerts_probe_every_public_app(host, inventory_host):
    timer = host.service("portable-k3s-app-probe.timer")
    if not inventory_host.get("alerts_ntfy_url"):
        assert not timer.is_running and not host.file("/usr/local/lib/portable-k3s/app-probe").exists
        return
    assert timer.is_running and timer.is_enabled
    script = host.file("/usr/local/lib/portable-k3s/app-probe").content_string
    probed = set(re.search(r"^for name in (.*); do$", script, re.MULTILINE).group(1).split())
    assert probed == _public_hostnames(inventory_host)
    auth = host.file("/etc/portable-k3s/ntfy-auth")
    assert not inventory_host.get("alerts_ntfy_token") or (auth.mode == 0o600 and auth.user == "root")
