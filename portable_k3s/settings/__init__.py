"""
The settings registry: every inventory key the library reads, declared once, one module per component.

Each ``Setting`` carries its type (check and JSON Schema), default, scope, whether it is a secret, and its
documentation. From the registry come the deploys' ``data_defaults`` (``defaults``), the checks of single values
(``portable_k3s.config`` adds the rules between keys and hosts), the unknown-key check (``unknown_key_problem``),
the README's data-key tables (``markdown_tables``) and a JSON Schema of the group data for editors
(``json_schema``; ``python -m portable_k3s settings --schema``).

To add a key: declare it in its component's module; its deploy reads it from ``host.data``.
"""

from __future__ import annotations

import difflib
from types import ModuleType
from typing import Any

from . import addons, alerts, apps, backups, base, entrance, k3s, node_baseline, tailnet
from .core import ALL, GROUP, HOST, ConfigError, Setting, defaults, resolve_secret

__all__ = [
    "ALL", "COMPONENTS", "GROUP", "HOST", "SETTINGS", "ConfigError", "Setting", "defaults", "json_schema",
    "markdown_tables", "resolve_secret", "unknown_key_problem",
]

# Component modules in the order the README lists them: (module, title).
COMPONENTS: tuple[tuple[ModuleType, str], ...] = (
    (base, "Every host"),
    (tailnet, "Tailnet: headscale and tailscale"),
    (entrance, "Entrance"),
    (alerts, "Downtime alerts"),
    (k3s, "k3s"),
    (addons, "Cluster add-ons"),
    (apps, "App catalog"),
    (backups, "Backups"),
    (node_baseline, "Node baseline"),
)

SETTINGS: dict[str, Setting] = {s.name: s for module, _ in COMPONENTS for s in module.SETTINGS}
SECRET_KEYS: frozenset[str] = frozenset(name for name, s in SETTINGS.items() if s.secret)

# Prefixes this library's keys use: an unknown key with one of them is a mistake, not someone else's key.
OWN_PREFIXES = ("k3s_", "tailscale_", "tailscaled_", "tailnet_", "headscale_", "entrance_", "alerts_", "acme_",
                "app_backup_", "rook_ceph", "metallb_", "dns01_", "s3_", "battery_", "kernel_panic_", "firmware_")
# Keys pyinfra and its connectors read: ssh_*, the global arguments (_sudo …), the connectors' own.
PYINFRA_PREFIXES = ("_", "ssh_", "winrm_", "docker_", "podman_", "dockerssh_", "chroot_", "local_", "vagrant_",
                    "terraform_", "pyinfra_")


def unknown_key_problem(key: str) -> tuple[str, str] | None:
    """
    ``(problem, expected)`` for a data key this library does not know but that looks meant for it (close to a
    known key, or with one of its prefixes); None for known keys, pyinfra's own and clearly foreign ones.
    """
    if key in SETTINGS or key.startswith(PYINFRA_PREFIXES) or key.isupper():
        return None
    close = difflib.get_close_matches(key, SETTINGS, n=1, cutoff=0.8)
    if close:
        return f"is not a setting: did you mean {close[0]}?", f"{close[0]}, or a key of your own with another name"
    if key.startswith(OWN_PREFIXES):
        prefix = next(p for p in OWN_PREFIXES if key.startswith(p))
        same = sorted(name for name in SETTINGS if name.startswith(prefix))
        return "is not a setting", f"one of {', '.join(same)}"
    return None


def json_schema() -> dict[str, Any]:
    """A JSON Schema of the group data (draft 2020-12): every setting's shape, secrets as references."""
    properties = {name: {"description": s.doc.replace("`", ""), **s.type.schema} for name, s in SETTINGS.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "portable-k3s group data",
        "type": "object",
        "properties": dict(sorted(properties.items())),
    }


def _default_cell(setting: Setting) -> str:
    if setting.default_doc is not None:
        return setting.default_doc
    if setting.default is None:
        return "none"
    return f"`{setting.default!r}`" if not isinstance(setting.default, str) else f"`{setting.default}`"


README_BEGIN = "<!-- settings tables: python -m portable_k3s settings -->"
README_END = "<!-- end of settings tables -->"


def markdown_tables() -> str:
    """The README's data-key tables, one per component, as the registry declares them (between ``README_BEGIN``
    and ``README_END`` in the README; a unit test fails when they differ)."""
    scope = {ALL: "all", GROUP: "group or host", HOST: "host"}
    parts: list[str] = []
    for module, title in COMPONENTS:
        parts += [f"#### {title} (`portable_k3s.settings.{module.__name__.rsplit('.', 1)[1]}`)", "",
                  "| key | set per | read on | default | meaning |", "|---|---|---|---|---|"]
        for s in module.SETTINGS:
            meaning = s.doc + (" (secret reference)" if s.secret and "secret reference" not in s.doc else "")
            parts.append(f"| `{s.name}` | {scope[s.scope]} | {s.read_on} | {_default_cell(s)} | {meaning} |")
        parts.append("")
    return "\n".join(parts)


def with_tables(readme: str) -> str:
    """``readme`` with the block between ``README_BEGIN`` and ``README_END`` replaced by ``markdown_tables()``."""
    start = readme.index(README_BEGIN) + len(README_BEGIN)
    end = readme.index(README_END, start)
    return f"{readme[:start]}\n\n{markdown_tables().rstrip()}\n\n{readme[end:]}"
