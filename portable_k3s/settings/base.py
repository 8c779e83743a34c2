"""Settings of every host: the cluster's domain and versions, host names, packages, time, SSH."""

from __future__ import annotations

import re
from typing import Any

from ..versions import VERSIONS
from .core import (
    ALL,
    HOST,
    Check,
    Setting,
    custom,
    integer,
    is_domain,
    is_host_or_ip,
    is_ipv4,
    optional,
    predicate,
    show,
    str_list,
    string,
    wrong_type,
)

DOMAIN_EXPECTED = "a lower-case DNS name like blog.example.org"
LABEL_EXPECTED = "an RFC 1123 label: lower-case letters, digits and '-', at most 63, like {example}"
SSH_PERMIT_ROOT_LOGIN: tuple[str, ...] = ("prohibit-password", "no")
DEBIAN_CODENAMES: tuple[str, ...] = ("bookworm", "trixie")
LOST_AFTER = 90  # seconds of silence after which a run gives a host up as lost

_SEMVER = r"v?(\d+\.\d+\.\d+)"
VERSION_RULES: dict[str, tuple[str, str]] = {
    "headscale": (_SEMVER, "MAJOR.MINOR.PATCH like 0.29.2"),
    "tailscale": (_SEMVER, "MAJOR.MINOR.PATCH like 1.98.10"),
    "k3s": (r"(v\d+\.\d+\.\d+\+k3s\d+)", "a k3s release like v1.35.3+k3s1"),
}
_GENERIC_VERSION = r"v?\d+\.\d+\.\d+([-+~][0-9A-Za-z.+~-]+)?"


def domain_type(expected: str = DOMAIN_EXPECTED) -> Any:
    return predicate(is_domain, "valid domain name", expected, {"type": "string", "format": "hostname"})


def label_type(what: str, example: str) -> Any:
    return string(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", f"valid {what}", LABEL_EXPECTED.format(example=example),
                  max_length=63)


def slug_type() -> Any:
    return string(r"[a-z0-9]+(-[a-z0-9]+)*", "valid slug", "a lower-case slug like thinkpad-t420", max_length=63)


def normalise_version(component: str, value: str) -> str:
    """Drop the leading ``v`` of a MAJOR.MINOR.PATCH pin (``v0.29.2`` -> ``0.29.2``)."""
    if component in VERSION_RULES:
        match = re.fullmatch(VERSION_RULES[component][0], value)
        if match:
            return match.group(1)
    return value


def version_problems(component: str, value: Any) -> Check:
    """One pin of ``versions``."""
    if component == "debian":
        expected = f"a Debian codename: {', '.join(DEBIAN_CODENAMES)}"
        if value not in DEBIAN_CODENAMES or not isinstance(value, str):
            return [(f"{show(value)} is not a supported Debian release", expected)]
        return []
    pattern, expected = VERSION_RULES.get(component, (_GENERIC_VERSION, "a version like 1.2.3"))
    if not isinstance(value, str):
        return [(wrong_type(value), f"a string, {expected}")]
    if not re.fullmatch(pattern, value):
        return [(f"{show(value)} is not a valid {component} version", expected)]
    return []


def _check_versions(value: Any) -> Check:
    if not isinstance(value, dict):
        return [(wrong_type(value), 'a dict like {"tailscale": "1.98.10"}')]
    known = ", ".join(sorted(VERSIONS))
    found: Check = []
    for component, pin in value.items():
        if component not in VERSIONS:
            found.append((f".{component}", "is not a versioned component", f"one of {known}"))
        else:
            found += [(f".{component}", problem, expected) for problem, expected in version_problems(component, pin)]
    return found


def _check_ssh_permit_root_login(value: Any) -> Check:
    expected = " or ".join(repr(choice) for choice in SSH_PERMIT_ROOT_LOGIN)
    if value not in SSH_PERMIT_ROOT_LOGIN or not isinstance(value, str):
        return [(f"{show(value)} is not allowed", expected)]
    return []


_DEVICE = r"/dev/[A-Za-z0-9._:+@=-]+(/[A-Za-z0-9._:+@=-]+)*"


def _is_device(value: str) -> bool:
    return re.fullmatch(_DEVICE, value) is not None and "/../" not in f"{value}/" and "/./" not in f"{value}/"


SETTINGS: tuple[Setting, ...] = (
    Setting("domain", domain_type(), "the public domain the apps live under", scope=ALL, required=True,
            default_doc="— (required)"),
    Setting("versions", custom(_check_versions, {"type": "object", "properties": {
        name: {"type": "string"} for name in VERSIONS}, "additionalProperties": False}),
        'override a pinned version, e.g. `{"tailscale": "1.98.10"}`', {}, ALL,
        default_doc="`portable_k3s/versions.py`"),
    Setting("hostname", optional(label_type("host name", "t420 or node-1")),
            "the host's name on the tailnet and in k3s (an RFC 1123 label)", None, HOST,
            default_doc="the inventory name"),
    Setting("base_packages", str_list(string(r"[a-z0-9][a-z0-9+.-]+", "valid package name",
                                             "Debian package names like curl"), "Debian package names like curl"),
            "Debian packages every host gets", ["ca-certificates", "curl", "gnupg", "jq", "iptables", "rsync"],
            default_doc="ca-certificates, curl, gnupg, jq, iptables, rsync"),
    Setting("ntp_servers", str_list(predicate(is_host_or_ip, "valid host", "NTP server host names or IP addresses"),
                                    "NTP server host names or IP addresses", min_items=1),
            "NTP servers for systemd-timesyncd",
            ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org", "2.debian.pool.ntp.org"],
            default_doc="`[0-2].debian.pool.ntp.org`"),
    Setting("ssh_permit_root_login", custom(_check_ssh_permit_root_login, {"enum": list(SSH_PERMIT_ROOT_LOGIN)}),
            "`prohibit-password` (root by key only) or `no`", "prohibit-password"),
    Setting("connection_lost_after", integer(10, 3600, "whole seconds 10-3600"),
            "seconds (10-3600) a host's SSH connection may stay silent before a run gives the host up as lost: its "
            "commands fail and the other hosts carry on (without it, a host that lost power mid-run holds its "
            "command for about 15 minutes)", LOST_AFTER),
    Setting("hardware", optional(slug_type()), "a slug naming the machine, e.g. `thinkpad-t420`", None, HOST),
    Setting("external_ssd", optional(predicate(
        _is_device, "block device path", "/dev/NAME, e.g. /dev/sdb, /dev/nvme0n1 or /dev/disk/by-id/...")),
        "the node's external SSD for storage, e.g. `/dev/sdb` (rook-ceph uses it)", None, HOST, "k3s nodes"),
    Setting("public_ipv4", optional(predicate(is_ipv4, "IPv4 address",
        "the host's public IPv4, e.g. 203.0.113.10, or None")),
        "an entrance's public address: where the public apps' DNS records must point (checked by `doctor`)",
        None, HOST, "entrance", default_doc="`ssh_hostname` when it is an IPv4 address"),
)
