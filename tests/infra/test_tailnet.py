"""Checks for the tailnet: headscale on its host, tailscale on every node (deploys.headscale, deploys.tailscale)."""

from __future__ import annotations

import json
import time

import pytest


@pytest.mark.groups("headscale")
def test_headscale_runs_hardened(host):
    service = host.service("headscale")
    assert service.is_running and service.is_enabled
    assert host.check_output("systemctl show -p User --value headscale") == "headscale"
    config = host.file("/etc/headscale/config.yaml")
    assert config.mode == 0o640 and config.group == "headscale"
    assert "policy:" in config.content_string


@pytest.mark.groups("headscale")
def test_headscale_config_and_policy_are_valid(host):
    host.check_output("runuser -u headscale -- headscale configtest -c /etc/headscale/config.yaml")
    policy = json.loads(host.file("/etc/headscale/policy.hujson").content_string)
    assert {"tag:k3s", "tag:entrance"} <= set(policy["tagOwners"])
    assert not host.file("/etc/headscale/.config.portable-k3s-new.yaml").exists


@pytest.mark.groups("headscale")
def test_headscale_is_backed_up_on_a_timer(host, inventory_host):
    timer = host.service("portable-k3s-headscale-backup.timer")
    if inventory_host.get("headscale_backup") is False:
        assert not timer.is_running
        return
    assert timer.is_running and timer.is_enabled
    assert host.exists("sqlite3")
    directory = host.file(inventory_host.get("headscale_backup_dir") or "/var/backups/headscale")
    assert not directory.exists or (directory.is_directory and directory.mode == 0o700)


@pytest.mark.groups("headscale")
def test_no_valid_unused_preauth_key(host):
    keys = json.loads(host.check_output("headscale preauthkeys list -o json") or "null") or []
    valid_unused = [k for k in keys if not k.get("used") and k["expiration"]["seconds"] > time.time()]
    assert not valid_unused, valid_unused


@pytest.mark.groups("headscale", "entrance", "k3s_servers", "k3s_agents", "exit_nodes")
def test_tailscale_node_is_in_the_tailnet(host, inventory_host):
    assert host.service("tailscaled").is_running
    status = json.loads(host.check_output("tailscale status --json"))
    assert status["BackendState"] == "Running"
    assert status["Self"]["Online"] or status["Self"]["TailscaleIPs"]
    assert any(ip.startswith("100.") for ip in status["Self"]["TailscaleIPs"])
    prefs = json.loads(host.check_output("tailscale debug prefs"))
    assert prefs["ControlURL"] == inventory_host.get("headscale_url")
    assert not host.file("/run/portable-k3s/tailscale-authkey").exists


@pytest.mark.groups("headscale", "entrance", "k3s_servers", "k3s_agents", "exit_nodes")
def test_tailscaled_starts_once_the_network_is_online(host):
    """Started before the LAN address exists, tailscaled can miss it coming up and stay "network down"."""
    wants = host.check_output("systemctl show -p Wants -p After --value tailscaled").split()
    assert wants.count("network-online.target") == 2, wants
