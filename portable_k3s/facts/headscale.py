"""Facts about a headscale server, gathered in one remote command (through its local unix socket)."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand

from .util import next_section, sections


class HeadscaleInfo(TypedDict):
    running: bool
    users: dict[str, int]
    nodes: list[dict[str, Any]]


class Headscale(FactBase[HeadscaleInfo]):
    """
    Returns headscale's users (name → numeric ID) and nodes, as headscale itself lists them;
    ``running`` is False (and the lists empty) when headscale is not installed or not answering.

    .. code:: python

        {
            "running": True,
            "users": {"admin": 1},
            "nodes": [{"id": 3, "name": "h2", "node_key": "nodekey:ab12…", "ipv4": "100.64.0.3",
                       "tags": ["tag:k3s"], "online": True, "approved_routes": []}],
        }
    """

    @staticmethod
    def default() -> HeadscaleInfo:
        return {"running": False, "users": {}, "nodes": []}

    def command(self) -> StringCommand:
        return StringCommand(
            "command -v headscale >/dev/null 2>&1 && systemctl is-active --quiet headscale.service",
            "&& headscale users list -o json 2>/dev/null;",
            next_section(),
            "systemctl is-active --quiet headscale.service 2>/dev/null && headscale nodes list -o json 2>/dev/null"
            " || true",
        )

    def process(self, output: list[str]) -> HeadscaleInfo:
        users_lines, nodes_lines = sections(output, 2)
        info = self.default()
        users = _json(users_lines)
        if users is _INVALID:
            return info
        info["running"] = True
        info["users"] = {
            u["name"]: int(u["id"]) for u in (users if isinstance(users, list) else []) if "name" in u and "id" in u
        }
        info["nodes"] = parse_nodes("\n".join(nodes_lines))
        return info


def parse_nodes(text: str) -> list[dict[str, Any]]:
    """``headscale nodes list -o json`` output as the fact's node entries (headscale prints ``null`` for none)."""
    try:
        listed = json.loads(text) if text.strip() else None
    except ValueError:
        return []
    nodes = []
    for node in listed if isinstance(listed, list) else []:
        if not isinstance(node, dict):
            continue
        addresses = node.get("ip_addresses") or []
        nodes.append({
            "id": int(node.get("id", 0)),
            "name": node.get("given_name") or node.get("name"),
            "node_key": node.get("node_key"),
            "ipv4": next((a for a in addresses if ":" not in a), None),
            "tags": sorted(set(node.get("tags") or [])),
            "online": bool(node.get("online")),
            "approved_routes": node.get("approved_routes") or [],
        })
    return nodes


_INVALID: Any = object()


def _json(lines: list[str]) -> Any:
    if not lines:
        return _INVALID
    try:
        return json.loads("\n".join(lines))
    except ValueError:
        return _INVALID
