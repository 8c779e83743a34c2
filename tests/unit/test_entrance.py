"""The entrance: the nginx config it renders from the app catalog, and how ``nginx.entrance_config`` plans."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

from pyinfra.api.command import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from portable_k3s.config import App
from portable_k3s.deploys.entrance import ENTRANCE_DEFAULTS, render_entrance
from portable_k3s.operations import nginx
from portable_k3s.render import sha256

APPS = [
    App("website", "example.org", public=True),
    App("blog", "blog.example.org", public=True),
    App("vaultwarden", "pass.example.org", public=False),
    App("minecraft", "mc.example.org", public=True, tcp_port=25565, proxy_protocol=False),
    App("game-two", "g2.example.org", public=True, tcp_port=7777, proxy_protocol=True),
    App("private-tcp", "ptcp.example.org", public=False, tcp_port=6000),
]
BACKENDS = ["100.64.0.2", "100.64.0.3"]


def _config() -> str:
    return render_entrance(APPS, dict(ENTRANCE_DEFAULTS), BACKENDS)


def _block(text: str, opening: str) -> str:
    """The body of the block that starts with ``opening`` (braces matched)."""
    start = text.index(opening)
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    raise AssertionError(f"unclosed {opening}")


def test_sni_map_lists_exactly_the_public_hostnames() -> None:
    sni_map = _block(_config(), "map $ssl_preread_server_name")
    entries = {k: v.rstrip(";") for k, v in (line.strip().rstrip(";").split() for line in sni_map.strip().splitlines())}
    assert entries.pop("default") == "unix:/run/nginx-entrance-closed.sock"
    assert entries == {name: "cluster_https" for name in ("blog.example.org", "example.org", "g2.example.org",
                                                            "mc.example.org")}


def test_tls_passes_through_with_the_proxy_protocol_to_every_backend() -> None:
    config = _config()
    https = _block(config, "upstream cluster_https")
    assert re.findall(r"server (\S+):443", https) == BACKENDS
    server = [b for b in re.split(r"\n    server \{", _block(config, "stream {")) if "listen 443;" in b][0]
    assert "ssl_preread on;" in server and "proxy_protocol on;" in server
    assert "ssl_certificate" not in config  # the entrance never terminates TLS


def test_one_stream_server_per_public_tcp_app_with_its_proxy_protocol_setting() -> None:
    stream = _block(_config(), "stream {")
    assert re.findall(r"listen (\d+);", stream) == ["443", "7777", "25565"]
    assert "upstream app_game_two" in stream and "upstream app_minecraft" in stream
    assert "6000" not in stream  # private TCP apps are not forwarded
    minecraft = stream[stream.index("listen 25565;"):]
    assert minecraft.split("}")[0].count("proxy_protocol off;") == 1
    game = stream[stream.index("listen 7777;"):]
    assert game.split("}")[0].count("proxy_protocol on;") == 1


def test_port_80_serves_acme_for_public_names_and_drops_the_rest() -> None:
    http = _block(_config(), "http {")
    assert "listen 80 default_server;\n        return 444;" in http
    names = re.search(r"server_name ([^;]+);", http)
    assert names and names.group(1).split() == ["blog.example.org", "example.org", "g2.example.org",
                                                "mc.example.org"]
    assert "location /.well-known/acme-challenge/ {\n            proxy_pass http://cluster_http;" in http
    assert "return 301 https://$host$request_uri;" in http
    assert re.findall(r"server (\S+):80 ", _block(http, "upstream cluster_http")) == BACKENDS


def test_no_public_app_means_no_forwarding_at_all() -> None:
    config = render_entrance([App("vaultwarden", "pass.example.org")], dict(ENTRANCE_DEFAULTS), BACKENDS)
    assert "cluster_https;" not in _block(config, "map $ssl_preread_server_name")
    assert "server_name" not in _block(config, "http {")


def _plan(addresses: list[str | None], current_sha: str | None = None, **kwargs: Any) -> list[Any]:
    state = FakeState()
    nodes = [{"name": f"node{i}", "ipv4": a} for i, a in enumerate(addresses) if a is not None]
    headscale_host = create_host(state, facts={"headscale.Headscale": {"running": True, "users": {}, "nodes": nodes}})
    headscale_host.name = "cloud"
    current = {"sha256": current_sha, "mode": "644", "user": "root", "group": "root"} if current_sha else None
    entrance = create_host(state, facts={"files.FileStates": {"paths=('/etc/nginx/nginx.conf',)": {
        "/etc/nginx/nginx.conf": current}}})
    entrance.name = "cloud"

    def render_config(found: list[str]) -> str:
        return render_entrance(APPS, dict(ENTRANCE_DEFAULTS), found)

    arguments: dict[str, Any] = {
        "render_config": render_config, "backends": [f"node{i}" for i in range(len(addresses))],
        "headscale_host": headscale_host, **kwargs,
    }
    with ctx_state.use(state), ctx_host.use(entrance):
        return list(nginx.entrance_config._inner(**arguments))


def test_known_backends_write_the_config_tested_in_place() -> None:
    commands = _plan(BACKENDS)
    uploads = [c for c in commands if isinstance(c, FileUploadCommand)]
    assert len(uploads) == 1 and uploads[0].src.getvalue() == _config()
    swap = commands[-1].get_raw_value()
    assert isinstance(commands[-1], StringCommand)
    assert "mv -f /etc/nginx/.nginx.portable-k3s-new.conf /etc/nginx/nginx.conf" in swap
    assert "if ! { nginx -t -q ; }; then" in swap and "mv -f /etc/nginx/.nginx.portable-k3s-new.conf.previous" in swap


def test_a_new_config_is_marked_pending_before_it_goes_into_place_also_when_written_at_execution() -> None:
    marker = "/var/lib/portable-k3s/pending/nginx.service.reload"
    swap = _plan(BACKENDS, pending=marker)[-1].get_raw_value()
    assert swap.index(f"touch {marker} &&") < swap.index("mv -f /etc/nginx/.nginx.portable-k3s-new.conf /etc/nginx")
    state = FakeState()
    headscale_host = create_host(state, facts={"headscale.Headscale": {"running": True, "users": {}, "nodes": []}})
    listed = json.dumps([{"given_name": f"node{i}", "ip_addresses": [a]} for i, a in enumerate(BACKENDS)])
    headscale_host.run_shell_command = lambda command, **kw: (True, SimpleNamespace(stdout=listed))
    entrance = create_host(state, facts={"files.FileStates": {"paths=('/etc/nginx/nginx.conf',)": {}}})
    arguments = {"render_config": lambda found: render_entrance(APPS, dict(ENTRANCE_DEFAULTS), found),
                 "backends": ["node0", "node1"], "headscale_host": headscale_host, "pending": marker}
    with ctx_state.use(state), ctx_host.use(entrance):
        [deferred] = list(nginx.entrance_config._inner(**arguments))
    ran: list[str] = []
    entrance.put_file = lambda src, dest, **kw: True
    entrance.run_shell_command = lambda command, **kw: (ran.append(str(command)), (True, None))[1]
    deferred.function(state, entrance)
    assert len(ran) == 1 and ran[0].index(f"touch {marker} &&") < ran[0].index("mv -f /etc/nginx/nginx.conf.portable")


def test_converged_config_is_a_noop() -> None:
    assert _plan(BACKENDS, current_sha=sha256(_config())) == []


def test_backend_without_a_tailnet_address_defers_the_config_to_execution() -> None:
    commands = _plan(["100.64.0.2", None])
    assert len(commands) == 1 and isinstance(commands[0], FunctionCommand)
    assert commands[0].function.__name__ == "write_when_joined"


def test_a_single_ingress_address_replaces_the_nodes() -> None:
    commands = _plan([None], address="192.168.1.240")
    upload = next(c for c in commands if isinstance(c, FileUploadCommand))
    assert "server 192.168.1.240:443" in upload.src.getvalue() and "100.64." not in upload.src.getvalue()


def _plan_followed(current_sha: str | None) -> tuple[list[Any], Any, Any]:
    """nginx.entrance_followed planned on a new node (not the entrance) for an entrance outside the run."""
    state = FakeState()
    nodes = [{"name": f"node{i}", "ipv4": a} for i, a in enumerate(BACKENDS)]
    headscale_host = create_host(state, facts={"headscale.Headscale": {"running": True, "users": {}, "nodes": nodes}})
    current = {"sha256": current_sha, "mode": "644", "user": "root", "group": "root"} if current_sha else None
    entrance = create_host(state, facts={"files.FileStates": {"paths=('/etc/nginx/nginx.conf',)": {
        "/etc/nginx/nginx.conf": current}}})
    entrance.name = "cloud"
    new_node = create_host(state, facts={})
    arguments: dict[str, Any] = {
        "entrance": entrance, "render_config": lambda found: render_entrance(APPS, dict(ENTRANCE_DEFAULTS), found),
        "backends": [f"node{i}" for i in range(len(BACKENDS))], "headscale_host": headscale_host,
    }
    with ctx_state.use(state), ctx_host.use(new_node):
        return list(nginx.entrance_followed._inner(**arguments)), entrance, state


def test_a_node_deployed_alone_points_the_entrance_at_it_and_reloads_it() -> None:
    commands, entrance, state = _plan_followed(current_sha="0" * 64)
    assert len(commands) == 1 and isinstance(commands[0], FunctionCommand)
    uploads: list[tuple[str, str]] = []
    ran: list[str] = []
    entrance.put_file = lambda src, dest, **kw: uploads.append((src.getvalue(), dest)) or True
    entrance.run_shell_command = lambda command, **kw: (ran.append(str(command)), (True, None))[1]
    commands[0].function(state, entrance)
    assert uploads == [(_config(), "/etc/nginx/nginx.conf.portable-k3s-new")]
    assert len(ran) == 1 and "nginx -t -q" in ran[0] and ran[0].endswith("&& systemctl reload nginx.service")


def test_an_entrance_that_already_points_at_every_node_is_left_alone() -> None:
    commands, _, _ = _plan_followed(current_sha=sha256(_config()))
    assert commands == []


def _inventory(entrance_data: dict, node_data: dict) -> Any:
    from pyinfra.api import Inventory

    data = {"domain": "example.org", "headscale_url": "https://headscale.example.org",
            "tailnet_domain": "tailnet.example.org"}
    return Inventory(
        (["cloud", "master"], data),
        headscale=(["cloud"], {}), entrance=([("cloud", entrance_data)], {}),
        k3s_servers=([("master", node_data)], {}),
    )


def test_entrance_upstream_address_needs_an_advertised_route_and_accepting_entrance() -> None:
    from portable_k3s.config import ConfigError, validate_inventory

    routed = {"tailscale_advertise_routes": ["192.168.1.240/28"]}
    ok = {"entrance_upstream": "192.168.1.241", "tailscale_accept_routes": True}
    validate_inventory(_inventory(ok, routed))
    for entrance_data, node_data, key in (
        (ok, {}, "cloud.entrance_upstream: 192.168.1.241 is in no subnet a host advertises"),
        ({"entrance_upstream": "192.168.1.241"}, routed, "cloud.tailscale_accept_routes: is not True"),
        ({"entrance_upstream": "metallb", "tailscale_accept_routes": True}, routed,
         "cloud.entrance_upstream: 'metallb' is not 'nodes' or an IPv4 address"),
    ):
        try:
            validate_inventory(_inventory(entrance_data, node_data))
        except ConfigError as error:
            assert any(p.startswith(key) for p in error.problems), error.problems
        else:
            raise AssertionError(f"no problem for {entrance_data}")


def test_hostile_client_limits_are_in_every_public_stream_server() -> None:
    config = _config()
    assert re.search(r"^worker_rlimit_nofile 16448;$", config, re.M)  # 2 x 8192 connections + 64
    assert "worker_connections 8192;" in _block(config, "events {")
    stream = _block(config, "stream {")
    assert "preread_timeout 5s;" in stream
    assert "limit_conn_zone $binary_remote_addr zone=entrance_per_address:10m;" in stream
    public = [b for b in re.split(r"\n    server \{", stream) if re.search(r"listen (443|25565|7777);", b)]
    assert len(public) == 3 and all("limit_conn entrance_per_address 64;" in b for b in public)
    unlimited = render_entrance(APPS, {**ENTRANCE_DEFAULTS, "entrance_connections_per_address": 0}, BACKENDS)
    assert "limit_conn" not in unlimited


def test_bad_hostile_client_limits_are_named() -> None:
    from portable_k3s.config import ConfigError, validate_inventory

    for key, value, problem in (
        ("entrance_preread_timeout", "5s", "cloud.entrance_preread_timeout: '5s' is a str (expected whole seconds"),
        ("entrance_preread_timeout", 0, "cloud.entrance_preread_timeout: 0 is out of range"),
        ("entrance_connections_per_address", -1, "cloud.entrance_connections_per_address: -1 is out of range"),
        ("entrance_worker_connections", 100, "cloud.entrance_worker_connections: 100 is out of range (expected "
                                             "connections per nginx worker, 512-262144)"),
    ):
        try:
            validate_inventory(_inventory({key: value}, {}))
        except ConfigError as error:
            assert any(p.startswith(problem) for p in error.problems), error.problems
        else:
            raise AssertionError(f"no problem for {key}={value!r}")
