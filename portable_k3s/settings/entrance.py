"""Settings of the entrance: nginx's SNI whitelist on the public host, its ports, timeouts and limits."""

from __future__ import annotations

import re
from typing import Any

from .core import Check, Setting, custom, integer, is_int, is_ipv4, port, show, wrong_type

ENTRANCE = "entrance"
_DURATION = re.compile(r"(?:[0-9]{1,6}(?:ms|s|m|h|d))+|[0-9]{1,6}")
_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)?")
_TO_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def nginx_duration(low_ms: int, high_ms: int, what: str) -> Any:
    """An nginx time (``3s``, ``500ms``, ``1m30s``) or whole seconds, from ``low_ms`` to ``high_ms``."""
    expected = f"{what}: an nginx time like 3s, 500ms or 1m, or whole seconds, from {low_ms} ms to {high_ms // 1000} s"

    def check(value: Any) -> Check:
        if is_int(value):
            value = str(value)
        elif not isinstance(value, str):
            return [(wrong_type(value), expected)]
        if not _DURATION.fullmatch(value):
            return [(f"{show(value)} is not a time", expected)]
        total = sum(int(number) * _TO_MS[unit or None] for number, unit in _PART.findall(value))
        if not low_ms <= total <= high_ms:
            return [(f"{value} is out of range", expected)]
        return []

    return custom(check, {"anyOf": [{"type": "string", "pattern": f"^{_DURATION.pattern}$"},
                                    {"type": "integer", "minimum": 1}]})


def _check_upstream(value: Any) -> Check:
    if value == "nodes" or (isinstance(value, str) and is_ipv4(value)):
        return []
    return [(f"{show(value)} is not 'nodes' or an IPv4 address",
             "'nodes' (every k3s node's tailnet address) or the ingress IP, e.g. a MetalLB address")]


SETTINGS: tuple[Setting, ...] = (
    Setting("entrance_https_port", port("a port 1-65535 where the entrance takes TLS and the ingress serves it"),
            "where the entrance listens for TLS and the cluster ingress serves it", 443, read_on=ENTRANCE),
    Setting("entrance_http_port", port("a port 1-65535 where the entrance takes plain http (ACME, redirects)"),
            "where the entrance listens for plain http (ACME challenges, redirects) and the ingress serves it", 80,
            read_on=ENTRANCE),
    Setting("entrance_connect_timeout", nginx_duration(1, 75_000, "the time to connect to a backend"),
            "connect timeout to a backend", "3s", read_on=ENTRANCE),
    Setting("entrance_fail_timeout", nginx_duration(1000, 3_600_000, "how long a failed backend is skipped"),
            "how long a failed backend is skipped (passive health check)", "10s", read_on=ENTRANCE),
    Setting("entrance_upstream", custom(_check_upstream, {"anyOf": [{"const": "nodes"},
                                                                    {"type": "string", "format": "ipv4"}]}),
            "`nodes` (every k3s node's tailnet address), or one ingress IPv4 such as a MetalLB address: it must lie "
            "in a `tailscale_advertise_routes` subnet of some host, and the entrance needs "
            "`tailscale_accept_routes = True` (MetalLB answers ARP on the LAN; the tailnet is layer 3)", "nodes",
            read_on=ENTRANCE),
    Setting("entrance_preread_timeout", integer(1, 60, "whole seconds 1-60 a client may take to send its TLS "
                                                "ClientHello"),
            "seconds a client may take to send its TLS ClientHello before it is closed (nginx's default is 30)", 5,
            read_on=ENTRANCE),
    Setting("entrance_connections_per_address", integer(
        1, 100000, "connections one client address may hold open, 1-100000, or 0 for no limit", or_zero=True),
        "connections one client address may hold open on the public ports (`0`: no limit): thousands of idle "
        "connections from one scanner cannot starve other visitors", 64, read_on=ENTRANCE),
    Setting("entrance_worker_connections", integer(512, 262144, "connections per nginx worker, 512-262144"),
            "connections per nginx worker; the workers' open-file limit is set to match (two files per proxied "
            "connection)", 8192, read_on=ENTRANCE),
)
