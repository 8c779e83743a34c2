"""Render the library's jinja2 templates (``portable_k3s/templates``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jinja2
import yaml

TEMPLATE_DIR = Path(__file__).parent / "templates"

# Read once at import: templates are small, and rendering then touches no local file.
_env = jinja2.Environment(
    loader=jinja2.DictLoader(
        {path.relative_to(TEMPLATE_DIR).as_posix(): path.read_text() for path in TEMPLATE_DIR.rglob("*.j2")}
    ),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # noqa: S701 - config files, not HTML
)


def render(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` with ``context``; an undefined variable is an error, not an empty string."""
    return _env.get_template(name).render(**context)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases: a value used twice is written twice, as a reader expects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(value: Any) -> str:
    """``value`` as block-style YAML in its own key order, without anchors, without a trailing newline."""
    return yaml.dump(value, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False).rstrip("\n")
