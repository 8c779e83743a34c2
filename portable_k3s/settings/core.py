"""
The parts every settings module is made of: ``Setting`` (one inventory key, declared once), the value types
that check a value and describe it as JSON Schema, secret references, and ``ConfigError``.

A check returns a list of ``(problem, expected)``, or ``(path, problem, expected)`` for a part of the value
(``[2]``, ``.start``); an empty list means the value is fine. The problem says what is wrong with the value the
user gave, the expected part what would be valid.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import HiddenValue
from pyinfra.api.exceptions import PyinfraError

Check = list[tuple[str, ...]]  # (problem, expected) or (path, problem, expected)

# How a setting may vary: one value for the whole inventory (group_data/all.py), per group or host, or per host.
ALL = "all"
GROUP = "group"
HOST = "host"
SCOPES = (ALL, GROUP, HOST)

REFERENCE_SHAPES = '{"env": "NAME"} or {"file": "PATH"}; never a literal secret in group_data'
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ANY_CASE_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ConfigError(PyinfraError):
    """
    The inventory's data is invalid; ``problems`` holds one line per problem.
    """

    def __init__(self, problems: Iterable[str]):
        self.problems: list[str] = list(dict.fromkeys(problems))
        count = len(self.problems)
        header = f"inventory has {count} problem{'' if count == 1 else 's'}; nothing was deployed:"
        super().__init__("\n".join([header, *(f"    {problem}" for problem in self.problems)]))


class Problems:
    """Problem lines collected while checking an inventory: ``<where>: <problem> (expected …)``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, problem: str, expected: str) -> None:
        self.lines.append(f"{where}: {problem} (expected {expected})")

    def add_check(self, where: str, check: Check) -> bool:
        """Add a check's problems at ``where`` (their paths appended); True when there were none."""
        found = located(check)
        for path, problem, expected in found:
            self.add(f"{where}{path}", problem, expected)
        return not found


# Showing values in problems
#


def show(value: Any) -> str:
    """A value as a problem line shows it: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def a(noun: str) -> str:
    """``noun`` with its indefinite article: an int, a str, an IPv4 address, an S3 location."""
    return f"an {noun}" if noun[:1] in "aeiou" or noun.startswith(("IP", "S3", "SHA", "RFC", "ntfy")) else f"a {noun}"


def wrong_type(value: Any) -> str:
    """``'80' is a str``; for None, which has no type worth naming: ``None is not allowed``."""
    if value is None:
        return "None is not allowed"
    return f"{show(value)} is {a(type_name(value))}"


# Value types: a check and its JSON Schema
#


@dataclass(frozen=True)
class Type:
    """
    What values a setting takes: ``check(value)`` lists the problems of one value, ``schema`` describes the
    same values as JSON Schema (for editors; the check is what the deploy trusts).
    """

    check: Callable[[Any], Check]
    schema: dict[str, Any] = field(default_factory=dict)


def optional(inner: Type) -> Type:
    """``inner`` or None."""
    return Type(lambda value: [] if value is None else inner.check(value),
                {"anyOf": [inner.schema, {"type": "null"}]} if inner.schema else {})


def boolean(meaning: str = "") -> Type:
    expected = "True or False" + (f" ({meaning})" if meaning else "")
    return Type(lambda value: [] if isinstance(value, bool) else [(wrong_type(value), expected)],
                {"type": "boolean"})


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_range_problems(value: Any, low: int, high: int, expected: str, or_zero: bool = False) -> Check:
    if not is_int(value):
        return [(wrong_type(value), expected)]
    if not (low <= value <= high or (or_zero and value == 0)):
        return [(f"{value} is out of range", expected)]
    return []


def integer(low: int, high: int, expected: str, or_zero: bool = False) -> Type:
    """A whole number from ``low`` to ``high`` (or 0 with ``or_zero``)."""
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    if or_zero:
        schema = {"anyOf": [schema, {"const": 0}]}
    return Type(lambda value: int_range_problems(value, low, high, expected, or_zero), schema)


def port(expected: str = "a port 1-65535") -> Type:
    return integer(1, 65535, expected)


def one_of(choices: Iterable[Any], what: str, expected: str | None = None) -> Type:
    """One of ``choices`` (compared by type too: ``1`` is not ``True``)."""
    options = tuple(choices)
    wanted = expected or " or ".join(map(repr, options))

    def check(value: Any) -> Check:
        if any(value == option and type(value) is type(option) for option in options):
            return []
        return [(f"{show(value)} is not {a(what)}", wanted)]

    return Type(check, {"enum": list(options)})


def string(pattern: str, what: str, expected: str, max_length: int = 4096) -> Type:
    """A string matching ``pattern`` (a full match)."""
    compiled = re.compile(pattern)

    def check(value: Any) -> Check:
        if not isinstance(value, str):
            return [(wrong_type(value), f"a string, {expected}")]
        if len(value) > max_length or not compiled.fullmatch(value):
            return [(f"{show(value)} is not {a(what)}", expected)]
        return []

    return Type(check, {"type": "string", "pattern": f"^(?:{pattern})$", "maxLength": max_length})


def predicate(test: Callable[[str], bool], what: str, expected: str, schema: dict[str, Any] | None = None) -> Type:
    """A string for which ``test`` holds."""

    def check(value: Any) -> Check:
        if not isinstance(value, str):
            return [(wrong_type(value), f"a string, {expected}")]
        if not test(value):
            return [(f"{show(value)} is not {a(what)}", expected)]
        return []

    return Type(check, schema or {"type": "string"})


def str_list(item: Type, what: str, min_items: int = 0) -> Type:
    """A list of values of ``item``; a bad one is named by its index."""

    def check(value: Any) -> Check:
        if not isinstance(value, list | tuple):
            return [(wrong_type(value), f"a list of {what}")]
        if len(value) < min_items:
            return [("is empty", f"at least {'one' if min_items == 1 else min_items} of {what}")]
        return [(f"[{index}]{path}", problem, expected) for index, entry in enumerate(value)
                for path, problem, expected in located(item.check(entry))]

    return Type(check, {"type": "array", "items": item.schema, "minItems": min_items})


def located(problems: Check) -> list[tuple[str, str, str]]:
    """A check's problems as ``(path, problem, expected)``; the path is empty for the value itself."""
    return [(entry[0], entry[1], entry[2]) if len(entry) == 3 else ("", entry[0], entry[1]) for entry in problems]


def custom(check: Callable[[Any], Check], schema: dict[str, Any] | None = None) -> Type:
    """A check of its own (for the shapes the factories above do not cover)."""
    return Type(check, schema or {})


# Names and addresses
#


def is_label(value: Any) -> bool:
    """An RFC 1123 label: lower-case letters, digits and hyphens, at most 63, no hyphen at either end."""
    return isinstance(value, str) and bool(_LABEL_RE.match(value))


def is_domain(value: Any, min_labels: int = 2, any_case: bool = False) -> bool:
    """A DNS name of at least ``min_labels`` labels, at most 253 characters, whose TLD is not all digits."""
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    labels = value.split(".")
    label_re = _ANY_CASE_LABEL_RE if any_case else _LABEL_RE
    if len(labels) < min_labels or not all(label_re.match(label) for label in labels):
        return False
    return not (len(labels) > 1 and labels[-1].isdigit())


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
        return True
    except ValueError:
        return False


def is_host_or_ip(value: str) -> bool:
    return is_ip(value) or is_domain(value, min_labels=1, any_case=True)


def url(what: str, example: str, schemes: tuple[str, ...] = ("https", "http")) -> Type:
    """A URL with one of ``schemes``, a valid host and an optional port and path (a trailing slash is fine), without
    quotes, spaces or a query."""

    def test(value: str) -> bool:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in schemes:
            return False
        authority, _, path = rest.partition("/")
        host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
        if port_text and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
            return False
        return is_host_or_ip(host) and re.fullmatch(r"[A-Za-z0-9._~%+@/-]*", path) is not None

    expected = f"an {' or '.join(s + '://' for s in schemes)} URL of {what}, like {example}"
    return predicate(test, "URL", expected, {"type": "string", "format": "uri"})


def listen_address(expected: str) -> Type:
    """``HOST:PORT`` with an IPv4 address, ``[IPv6]`` or a host name, and a port 1-65535."""

    def test(value: str) -> bool:
        host, sep, port_text = value.rpartition(":")
        if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            return False
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            return is_ip(host) and ":" in host
        return not host or is_ipv4(host) or is_domain(host, min_labels=1, any_case=True)  # ":8080": every address

    return predicate(test, "listen address", expected)


# Secrets
#


def secret_file_path(path: str, cwd: str | None) -> str:
    return path if os.path.isabs(path) else os.path.join(cwd or os.getcwd(), path)


def check_secret(value: Any, require: bool = False, cwd: str | None = None) -> Check:
    """Shape of a secret reference; with ``require`` also that its env var or file is there."""
    if isinstance(value, HiddenValue):
        return []
    if isinstance(value, str):
        return [("is a literal secret", REFERENCE_SHAPES)]
    # Never show the value itself: a misplaced secret would end up in the deploy's output.
    if not isinstance(value, dict):
        return [(f"{a(type_name(value))} is not a secret reference", REFERENCE_SHAPES)]
    if len(value) != 1 or next(iter(value)) not in ("env", "file"):
        keys = ", ".join(sorted(repr(key) for key in value)) or "no keys"
        return [(f"a dict with {keys} is not a secret reference", REFERENCE_SHAPES)]
    kind, ref = next(iter(value.items()))
    if kind == "env":
        if not isinstance(ref, str) or not ENV_NAME_RE.match(ref):
            return [("the env value is not an environment variable name", '{"env": "NAME"}, e.g. K3S_TOKEN')]
        if require and not os.environ.get(ref):
            return [(f"environment variable {ref} is not set", f"the secret in ${ref} when deploying")]
        return []
    if not isinstance(ref, str) or not ref:
        return [(f"{show(ref)} is not a file path", '{"file": "PATH"}, e.g. secrets/k3s_token')]
    path = secret_file_path(ref, cwd)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        if require:
            return [(f"secret file {ref} does not exist", f"a readable file {path} holding the secret")]
        return []
    if not stat.S_ISREG(mode):
        return [(f"secret file {ref} is not a regular file", f"a file {path} holding the secret")]
    if mode & 0o077:
        return [
            (f"secret file {ref} has mode {stat.S_IMODE(mode):04o}", f"mode 0600: chmod 600 {path}"),
        ]
    if require and not os.access(path, os.R_OK):
        return [(f"secret file {ref} is not readable", f"a file {path} readable by the deploying user")]
    return []


SECRET_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "object", "properties": {"env": {"type": "string", "pattern": ENV_NAME_RE.pattern}},
         "required": ["env"], "additionalProperties": False},
        {"type": "object", "properties": {"file": {"type": "string", "minLength": 1}},
         "required": ["file"], "additionalProperties": False},
    ],
}


def secret_reference() -> Type:
    """A secret reference (``{"env": NAME}`` or ``{"file": PATH}``); its presence is checked at deploy time."""
    return Type(lambda value: check_secret(value), SECRET_SCHEMA)


def resolve_secret(value: Any, key_path: str, cwd: str | None = None) -> HiddenValue:
    """
    Read a secret reference from the data and return it as a ``HiddenValue``.

    + value: ``{"env": "NAME"}``, ``{"file": "PATH"}`` (relative to ``cwd``) or a ``HiddenValue``
    + key_path: the data key, named in the error, e.g. ``all.k3s_token``
    + cwd: base directory for relative file paths (default: the current directory)

    .. code:: python

        token = resolve_secret(host.data.k3s_token, "k3s_token")
    """
    if isinstance(value, HiddenValue):
        return value
    check = check_secret(value, require=True, cwd=cwd)
    if check:
        raise ConfigError(f"{key_path}: {problem} (expected {expected})" for problem, expected in check)
    kind, ref = next(iter(value.items()))
    if kind == "env":
        return HiddenValue(os.environ[ref].strip())
    path = secret_file_path(ref, cwd)
    with open(path, encoding="utf-8") as f:
        secret = f.read().strip()
    if not secret:
        raise ConfigError([f"{key_path}: secret file {ref} is empty (expected the secret in {path})"])
    return HiddenValue(secret)


# Settings
#

_MISSING = object()


@dataclass(frozen=True)
class Setting:
    """
    One inventory key, declared once.

    + name: the data key
    + type: what values it takes (its check and JSON Schema)
    + doc: what it means, for the README's tables
    + default: the value when nothing sets it (``required`` settings have none)
    + scope: ``all`` (one value for the inventory), ``group`` (per group or host) or ``host`` (per host)
    + read_on: the hosts that read it, as the README says it (``every host``, ``entrance``, ``k3s servers`` …)
    + secret: a secret reference, never a literal
    + required: the inventory must set it
    + default_doc: how the README shows the default, when not the value itself
    """

    name: str
    type: Type
    doc: str
    default: Any = None
    scope: str = GROUP
    read_on: str = "every host"
    secret: bool = False
    required: bool = False
    default_doc: str | None = None

    def __post_init__(self) -> None:
        assert self.scope in SCOPES, f"{self.name}: scope {self.scope!r}"


def secret(name: str, doc: str, scope: str = GROUP, read_on: str = "k3s servers") -> Setting:
    """A setting that holds a secret reference (None: not set)."""
    return Setting(name, optional(secret_reference()), doc, None, scope, read_on, secret=True)


def defaults(*settings: Iterable[Setting]) -> dict[str, Any]:
    """The ``data_defaults`` of a deploy: each setting's default (required ones have none)."""
    return {s.name: s.default for group in settings for s in group if not s.required}
