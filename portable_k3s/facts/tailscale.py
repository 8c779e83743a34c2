"""Facts about a tailscale node, gathered in one remote command."""

from __future__ import annotations

import json
import re
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand

from .util import SEPARATOR, next_section, sections

TAILSCALED_SOCKET = "/run/tailscale/tailscaled.sock"  # tailscaled's default on Linux (and our unit's)
LOCALAPI = "http://local-tailscaled.sock/localapi/v0"


class TailscaleInfo(TypedDict):
    version: str | None
    backend_state: str | None
    node_key: str | None
    dns_name: str | None
    ipv4: str | None
    ipv6: str | None
    online: bool
    prefs: dict[str, Any]


class Tailscale(FactBase[TailscaleInfo]):
    """
    Returns the tailscale client's version, its state (``Running``, ``NeedsLogin``, ``Stopped`` …), this node's
    key, MagicDNS name and tailnet addresses, and the preferences that ``tailscale up/set`` control.
    ``version`` (from the status, one program run less than ``tailscale version``) and ``backend_state`` are None
    when tailscale is not installed or tailscaled is not running.

    .. code:: python

        {
            "version": "1.98.10", "backend_state": "Running", "node_key": "nodekey:ab12…",
            "dns_name": "h2.tail.example.org", "ipv4": "100.64.0.2", "ipv6": "fd7a:115c:a1e0::2",
            "online": True,
            "prefs": {"ControlURL": "https://hs.example.org", "Hostname": "h2", "RouteAll": False,
                      "CorpDNS": True, "AdvertiseRoutes": [], "AdvertiseTags": None, "WantRunning": True},
        }
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    @staticmethod
    def default() -> TailscaleInfo:
        return {
            "version": None, "backend_state": None, "node_key": None, "dns_name": None,
            "ipv4": None, "ipv6": None, "online": False, "prefs": {},
        }

    def command(self) -> StringCommand:
        # Both answers come from tailscaled's LocalAPI, which the CLI itself asks: one run of curl (a base
        # package) costs half of two runs of the CLI (a large Go program). The CLI when that fails (no curl,
        # another socket, tailscaled not running).
        return StringCommand(
            f"o=$(curl -sf -m 10 --unix-socket {TAILSCALED_SOCKET} -w '\\n{SEPARATOR}\\n'",
            f"'{LOCALAPI}/status?peers=false' '{LOCALAPI}/prefs' 2>/dev/null)",
            '&& printf "%s\\n" "$o" || {',
            "tailscale status --json --peers=false 2>/dev/null || true;",
            next_section(),
            "tailscale debug prefs 2>/dev/null || true; }",
        )

    def process(self, output: list[str]) -> TailscaleInfo:
        status_lines, prefs_lines = sections(output, 2)
        info = self.default()
        status = _json(status_lines)
        match = re.match(r"^v?(\d+\.\d+\.\d+)", str(status.get("Version") or ""))
        info["version"] = match.group(1) if match else None
        if status:
            info["backend_state"] = status.get("BackendState")
            me = status.get("Self") or {}
            info["node_key"] = me.get("PublicKey")
            info["dns_name"] = (me.get("DNSName") or "").rstrip(".") or None
            info["online"] = bool(me.get("Online"))
            for ip in me.get("TailscaleIPs") or []:
                key = "ipv6" if ":" in ip else "ipv4"
                info[key] = info[key] or ip  # type: ignore[literal-required]
        prefs = _json(prefs_lines)
        keep = ("ControlURL", "Hostname", "RouteAll", "CorpDNS", "AdvertiseRoutes", "AdvertiseTags",
                "WantRunning", "LoggedOut", "NoSNAT")
        info["prefs"] = {key: prefs.get(key) for key in keep if key in prefs}
        return info


def _json(lines: list[str]) -> dict[str, Any]:
    try:
        value = json.loads("\n".join(lines)) if lines else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
