"""The configuration model: every inventory key the library reads, typed and validated in one place.

All data (group_data files, the inventory file's host and group data, ``--data`` overrides) is read into
one ``ClusterConfig`` before any operation is planned. Every problem is collected and reported at once,
one per line, as ``<host or group>.<key path>: <problem> (expected …)``:

.. code:: text

    all.apps[3].hostname: 'Blog..example.org' is not a valid domain name (expected a lower-case DNS ...)
    master.external_ssd: 'sdb' is not a block device path (expected /dev/NAME, e.g. /dev/sdb)
    headscale: 2 hosts (cloud, vps) (expected exactly one headscale host)

Check an inventory offline with ``python -m portable_k3s check inventories/home.py``; a deploy calls
``validate_state(state)`` first, so a bad inventory stops the run before any host is touched.

Secrets (``SECRET_KEYS``) are never literal strings in the data: give ``{"env": "VAR"}``,
``{"file": "path"}`` or a ``pyinfra.api.HiddenValue``, and read them with ``resolve_secret``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import HiddenValue, Inventory
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.host import Host

from portable_k3s.deploys.alerts import ALERTS_DEFAULTS
from portable_k3s.deploys.base import DEFAULTS as BASE_DEFAULTS
from portable_k3s.deploys.base import default_hostname
from portable_k3s.deploys.cluster import BACKUP_KEEP, CLUSTER_DEFAULTS, DNS01_PROVIDERS, INTERNAL_ISSUER, ISSUERS
from portable_k3s.deploys.headscale import BUILTIN_TAGS, HEADSCALE_DEFAULTS, host_tags, tailnet_policy
from portable_k3s.deploys.k3s import K3S_DEFAULTS
from portable_k3s.deploys.node_baseline import DEFAULTS as NODE_BASELINE_DEFAULTS
from portable_k3s.manifests.apps import KINDS, AppKind, kind_of
from portable_k3s.operations import hardware as hardware_ops
from portable_k3s.schedule import cron_problem
from portable_k3s.versions import VERSIONS

# Groups the library gives a meaning to; any other group (the inventory file's own, users' groups) is fine.
HEADSCALE = "headscale"
ENTRANCE = "entrance"
K3S_SERVERS = "k3s_servers"
K3S_AGENTS = "k3s_agents"
EXIT_NODES = "exit_nodes"
KNOWN_GROUPS = frozenset({HEADSCALE, ENTRANCE, K3S_SERVERS, K3S_AGENTS, EXIT_NODES})
# Hosts in any of these groups join the tailnet.
TAILNET_GROUPS = KNOWN_GROUPS

# Data keys that hold secrets: only {"env": NAME}, {"file": PATH} or a HiddenValue are accepted.
SECRET_KEYS: set[str] = {
    "k3s_token", "headscale_api_key", "s3_access_key", "s3_secret_key", "dns01_token", "alerts_ntfy_token",
    "app_backup_password",
}

# Keys an app table in ``apps`` may have; each one is read in ``_check_app``.
APP_KEYS: tuple[str, ...] = (
    "name", "hostname", "public", "tcp_port", "proxy_protocol",
    "kind", "image", "port", "storage", "storage_path", "env", "secrets", "resources", "backup", "backup_schedule",
)

# Ports the entrance itself listens on: SSH, HTTP (ACME + redirect) and the TLS passthrough.
RESERVED_PORTS: dict[int, str] = {22: "SSH", 80: "HTTP", 443: "HTTPS"}

DEBIAN_CODENAMES: tuple[str, ...] = ("bookworm", "trixie")
SSH_PERMIT_ROOT_LOGIN: tuple[str, ...] = ("prohibit-password", "no")

# Values used when no data sets the key: the base deploy's own defaults (one place for them).
DEFAULT_BASE_PACKAGES: tuple[str, ...] = tuple(BASE_DEFAULTS["base_packages"])
DEFAULT_NTP_SERVERS: tuple[str, ...] = tuple(BASE_DEFAULTS["ntp_servers"])
DEFAULT_SSH_PERMIT_ROOT_LOGIN: str = BASE_DEFAULTS["ssh_permit_root_login"]

# Where a value set with ``pyinfra --data key=value`` is said to come from.
OVERRIDE_SOURCE = "--data"

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ANY_CASE_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_SLUG_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_DEVICE_RE = re.compile(r"^/dev/[A-Za-z0-9._:+@=-]+(/[A-Za-z0-9._:+@=-]+)*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SEMVER_RE = re.compile(r"^v?(\d+\.\d+\.\d+)$")
_GENERIC_VERSION_RE = re.compile(r"^v?\d+\.\d+\.\d+([-+~][0-9A-Za-z.+~-]+)?$")

_DOMAIN_EXPECTED = "a lower-case DNS name like blog.example.org"
_LABEL_EXPECTED = "an RFC 1123 label: lower-case letters, digits and '-', at most 63, like {example}"
_REFERENCE_SHAPES = '{"env": "NAME"} or {"file": "PATH"}; never a literal secret in group_data'


class ConfigError(PyinfraError):
    """
    The inventory's data is invalid; ``problems`` holds one line per problem.
    """

    def __init__(self, problems: Iterable[str]):
        self.problems: list[str] = list(dict.fromkeys(problems))
        count = len(self.problems)
        header = f"inventory has {count} problem{'' if count == 1 else 's'}; nothing was deployed:"
        super().__init__("\n".join([header, *(f"    {problem}" for problem in self.problems)]))


@dataclass(frozen=True)
class App:
    """
    One entry of the app catalog (``apps`` in group_data/all.py).

    + name: unique slug, e.g. ``blog``
    + hostname: DNS name the app is served at (the domain or a name under it)
    + public: let it in through the entrance (else it resolves only inside the tailnet)
    + tcp_port: a raw TCP port the entrance forwards (e.g. 25565 for minecraft)
    + proxy_protocol: send the PROXY protocol header on ``tcp_port``
    + kind: what the cluster runs for it (``portable_k3s.manifests.apps.KINDS``); default: its name when that is
      a kind, else nothing (only its entrance or DNS entry: a service deployed some other way)
    + image: the container image (required for the ``container`` kind; else overrides the kind's pin)
    + port: the port the container listens on (default: the kind's)
    + storage: the size of its volume, e.g. ``10Gi`` (default: the kind's)
    + storage_path: where the volume is mounted (the ``container`` kind; default ``/data``)
    + env: more environment variables
    + secrets: secret references by name: the kind's (e.g. nextcloud's ``admin_password``), or for the
      ``container`` kind environment variable names
    + resources: ``{"cpu": "100m", "memory": "256Mi"}`` requests (memory is also the limit)
    + backup: back its volume up with the other apps' (``app_backup_s3``); default: the kind's (on, except for
      prometheus)
    + backup_schedule: its own cron schedule (default ``app_backup_schedule``)
    """

    name: str
    hostname: str | None = None
    public: bool = False
    tcp_port: int | None = None
    proxy_protocol: bool = True
    kind: str | None = None
    image: str | None = None
    port: int | None = None
    storage: str | None = None
    storage_path: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    backup: bool | None = None
    backup_schedule: str | None = None

    @property
    def deployed(self) -> bool:
        """The cluster runs it (it has a kind)."""
        return kind_of(self) is not None


@dataclass
class HostConfig:
    """
    One inventory host, with the data that applies to it.

    + name: the inventory name
    + groups: the groups the host is in
    + hostname: the host's name on the tailnet and in k3s (``hostname`` data, else the inventory name)
    + hardware: a slug naming the machine, e.g. ``thinkpad-t420``
    + external_ssd: the block device given to rook-ceph, e.g. ``/dev/sdb``
    + public_ipv4: the address the internet reaches the host at (``public_ipv4`` data, else ``ssh_hostname``
      when that is an IPv4 address); what the public apps' DNS names must point to on an entrance
    + base_packages, ntp_servers, ssh_permit_root_login: the base settings as this host sees them
    + secrets: the secret references (not values) set for this host, by key
    """

    name: str
    groups: frozenset[str]
    hostname: str
    hardware: str | None = None
    external_ssd: str | None = None
    public_ipv4: str | None = None
    base_packages: list[str] = field(default_factory=lambda: list(DEFAULT_BASE_PACKAGES))
    ntp_servers: list[str] = field(default_factory=lambda: list(DEFAULT_NTP_SERVERS))
    ssh_permit_root_login: str = DEFAULT_SSH_PERMIT_ROOT_LOGIN
    secrets: dict[str, Any] = field(default_factory=dict)


@dataclass
class TailnetConfig:
    """
    The tailnet: headscale's public URL, MagicDNS domain, admins, policy additions, DNS target of private apps.

    + routes: ``{cidr: [tags of the nodes advertising it]}`` from hosts' ``tailscale_advertise_routes``
    + pod_cidrs: the pod networks k3s routes through the tailnet itself (its "native" mode), else empty
    """

    headscale_url: str
    domain: str
    admins: list[str]
    tags: list[str]
    extra_grants: list[dict[str, Any]]
    ingress_address: str | None
    routes: dict[str, list[str]]
    pod_cidrs: list[str] = field(default_factory=list)


@dataclass
class AppBackups:
    """
    The apps' off-site backups (restic, one repository per app under ``s3``'s folder), validated.

    + s3: ``{"endpoint", "bucket", "region", "folder", "insecure"}`` (the ``app_backup_s3`` key)
    + schedule: the default cron schedule
    + keep: snapshots kept per period, e.g. ``{"daily": 7, "weekly": 4, "monthly": 6}``
    """

    s3: dict[str, Any]
    schedule: str
    keep: dict[str, int]


@dataclass
class AddonsConfig:
    """
    The cluster add-ons (``deploys.cluster``), validated.

    + metallb_pools: MetalLB's address pools (CIDRs or ``first-last`` ranges); empty: no MetalLB
    + lb_address: the one address the entrance targets (a MetalLB address for Traefik), or None (every node)
    + http_port, https_port: the ports the entrance reaches the cluster ingress on
    + acme_email, acme_issuer, acme_solver, dns01_provider: cert-manager's Let's Encrypt issuers
    + rook_ceph: rook-ceph runs on the nodes' ``external_ssd``; ceph_replicas copies of each block
    + ceph_nodes: ``(node name, device)`` of every k3s node with an ``external_ssd``
    + ceph_toolbox: rook's toolbox Deployment along with the Ceph cluster
    + backups: where and when the apps' volumes are backed up, or None (no app backups)
    """

    metallb_pools: list[str] = field(default_factory=list)
    lb_address: str | None = None
    http_port: int = 80
    https_port: int = 443
    acme_email: str | None = None
    acme_issuer: str = "letsencrypt-production"
    acme_solver: str = "http01"
    dns01_provider: str | None = None
    rook_ceph: bool = False
    ceph_replicas: int = 1
    ceph_nodes: list[tuple[str, str]] = field(default_factory=list)
    ceph_toolbox: bool = True
    backups: AppBackups | None = None

    @property
    def storage_class(self) -> str | None:
        """The apps' storage class: rook-ceph's, or None for the cluster's default (k3s's local-path)."""
        return "ceph-block" if self.rook_ceph else None

    def issuer_for(self, public: bool) -> str:
        """The ClusterIssuer of an app's certificate: Let's Encrypt, except for private apps with HTTP-01 (Let's
        Encrypt cannot reach them), which get the cluster's own CA."""
        return self.acme_issuer if public or self.acme_solver == "dns01" else INTERNAL_ISSUER


@dataclass
class ClusterConfig:
    """
    The whole cluster, validated. ``base_packages``, ``ntp_servers`` and ``ssh_permit_root_login`` are the
    inventory-wide values; a group or host may override them (see ``HostConfig``).
    """

    domain: str
    apps: list[App]
    hosts: dict[str, HostConfig]
    versions: dict[str, str]
    base_packages: list[str] = field(default_factory=lambda: list(DEFAULT_BASE_PACKAGES))
    ntp_servers: list[str] = field(default_factory=lambda: list(DEFAULT_NTP_SERVERS))
    ssh_permit_root_login: str = DEFAULT_SSH_PERMIT_ROOT_LOGIN
    tailnet: TailnetConfig | None = None
    addons: AddonsConfig = field(default_factory=AddonsConfig)

    def tailnet_policy(self) -> dict[str, Any]:
        """The headscale ACL policy generated from the inventory (see deploys.headscale.tailnet_policy)."""
        assert self.tailnet is not None
        ports = [80, 443] + [app.tcp_port for app in self.apps if app.tcp_port is not None]
        return tailnet_policy(
            admins=self.tailnet.admins, ingress_ports=ports, routes=self.tailnet.routes,
            extra_tags=self.tailnet.tags, extra_grants=self.tailnet.extra_grants, pod_cidrs=self.tailnet.pod_cidrs,
        )

    @property
    def ingress_address(self) -> str | None:
        return self.tailnet.ingress_address if self.tailnet else None

    def ingress_node(self) -> str:
        """The tailnet name of the node private app names point to when no ingress_address is set."""
        return self.hosts_in(K3S_SERVERS)[0].hostname

    def public_apps(self) -> list[App]:
        return [app for app in self.apps if app.public]

    def private_apps(self) -> list[App]:
        return [app for app in self.apps if not app.public]

    def hosts_in(self, group: str) -> list[HostConfig]:
        """Hosts of ``group``, in inventory order."""
        return [host for host in self.hosts.values() if group in host.groups]


# Problem collection
#


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, problem: str, expected: str) -> None:
        self.lines.append(f"{where}: {problem} (expected {expected})")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _wrong_type(value: Any) -> str:
    return f"{_show(value)} is {_a(_type_name(value))}"


# Where data comes from
#

_MISSING = object()


def _lookup(inventory: Inventory, host: Host, key: str) -> tuple[str, Any]:
    """
    Find ``key`` the way ``host.data`` does; returns ``(source, value)`` where source is the host, group,
    ``all`` or ``--data`` that sets it, or ``("", _MISSING)``.
    """
    layers: list[tuple[str, Mapping[str, Any]]] = [
        (OVERRIDE_SOURCE, inventory.get_override_data() or {}),
        (host.name, inventory.get_host_data(host.name) or {}),
    ]
    # Later groups win in pyinfra's group data merge.
    layers += [(group, inventory.get_group_data(group) or {}) for group in reversed(list(host.groups))]
    layers.append(("all", inventory.get_data() or {}))
    for source, data in layers:
        if key in data:
            return source, data[key]
    return "", _MISSING


def _sources(inventory: Inventory, key: str) -> dict[str, tuple[Any, list[Host]]]:
    """Each distinct place ``key`` is set, with its value and the hosts that see it (inventory order)."""
    found: dict[str, tuple[Any, list[Host]]] = {}
    for host in inventory:
        source, value = _lookup(inventory, host, key)
        if value is _MISSING:
            continue
        found.setdefault(source, (value, []))[1].append(host)
    return found


# Value checks: each returns a list of (problem, expected) for one value
#

Check = list[tuple[str, str]]


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


def _check_domain(value: Any) -> Check:
    if not isinstance(value, str):
        return [(_wrong_type(value), f"a string, {_DOMAIN_EXPECTED}")]
    if not is_domain(value):
        return [(f"{_show(value)} is not a valid domain name", _DOMAIN_EXPECTED)]
    return []


def _check_label(value: Any, what: str, example: str) -> Check:
    expected = _LABEL_EXPECTED.format(example=example)
    if not isinstance(value, str):
        return [(_wrong_type(value), f"a string, {expected}")]
    if not is_label(value):
        return [(f"{_show(value)} is not a valid {what}", expected)]
    return []


def _check_slug(value: Any) -> Check:
    expected = "a lower-case slug like thinkpad-t420"
    if not isinstance(value, str):
        return [(_wrong_type(value), f"a string, {expected}")]
    if not _SLUG_RE.match(value) or len(value) > 63:
        return [(f"{_show(value)} is not a valid slug", expected)]
    return []


def _check_device(value: Any) -> Check:
    expected = "/dev/NAME, e.g. /dev/sdb, /dev/nvme0n1 or /dev/disk/by-id/..."
    if not isinstance(value, str):
        return [(_wrong_type(value), f"a string, {expected}")]
    if not _DEVICE_RE.match(value) or "/../" in f"{value}/" or "/./" in f"{value}/":
        return [(f"{_show(value)} is not a block device path", expected)]
    return []


def _check_bool(value: Any) -> Check:
    if not isinstance(value, bool):
        return [(_wrong_type(value), "True or False")]
    return []


def _check_port(value: Any) -> Check:
    expected = "an integer port 1-65535, not 22, 80 or 443"
    if not isinstance(value, int) or isinstance(value, bool):
        return [(_wrong_type(value), expected)]
    if not 1 <= value <= 65535:
        return [(f"{value} is out of range", expected)]
    if value in RESERVED_PORTS:
        return [(f"{value} is reserved by the entrance ({RESERVED_PORTS[value]})", expected)]
    return []


def _check_str_list(
    value: Any, where: str, what: str, item_ok: Any, item_expected: str, problems: _Problems
) -> None:
    """Check a list of strings; a bad item is reported as ``where[i]``."""
    if not isinstance(value, list | tuple):
        problems.add(where, _wrong_type(value), f"a list of {what}")
        return
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item_ok(item):
            problems.add(f"{where}[{index}]", f"{_show(item)} is not a valid {item_expected}", what)


def _is_host_or_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return is_domain(value, min_labels=1, any_case=True)


def _check_ssh_permit_root_login(value: Any) -> Check:
    expected = " or ".join(repr(choice) for choice in SSH_PERMIT_ROOT_LOGIN)
    if value not in SSH_PERMIT_ROOT_LOGIN or not isinstance(value, str):
        return [(f"{_show(value)} is not allowed", expected)]
    return []


# Versions
#

_VERSION_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "headscale": (_SEMVER_RE, "MAJOR.MINOR.PATCH like 0.29.2"),
    "tailscale": (_SEMVER_RE, "MAJOR.MINOR.PATCH like 1.98.10"),
    "k3s": (re.compile(r"^(v\d+\.\d+\.\d+\+k3s\d+)$"), "a k3s release like v1.35.3+k3s1"),
}


def normalise_version(component: str, value: str) -> str:
    """Drop the leading ``v`` of a MAJOR.MINOR.PATCH pin (``v0.29.2`` -> ``0.29.2``)."""
    if component in _VERSION_RULES:
        match = _VERSION_RULES[component][0].match(value)
        if match:
            return match.group(1)
    return value


def _check_version(component: str, value: Any) -> Check:
    if component == "debian":
        expected = f"a Debian codename: {', '.join(DEBIAN_CODENAMES)}"
        if value not in DEBIAN_CODENAMES or not isinstance(value, str):
            return [(f"{_show(value)} is not a supported Debian release", expected)]
        return []
    pattern, expected = _VERSION_RULES.get(component, (_GENERIC_VERSION_RE, "a version like 1.2.3"))
    if not isinstance(value, str):
        return [(_wrong_type(value), f"a string, {expected}")]
    if not pattern.match(value):
        return [(f"{_show(value)} is not a valid {component} version", expected)]
    return []


def _check_versions(value: Any, where: str, problems: _Problems) -> dict[str, str]:
    versions = dict(VERSIONS)
    known = ", ".join(sorted(VERSIONS))
    if not isinstance(value, dict):
        problems.add(f"{where}.versions", _wrong_type(value), 'a dict like {"tailscale": "1.98.10"}')
        return versions
    for component, pin in value.items():
        if component not in VERSIONS:
            problems.add(f"{where}.versions.{component}", "is not a versioned component", f"one of {known}")
            continue
        check = _check_version(component, pin)
        for problem, expected in check:
            problems.add(f"{where}.versions.{component}", problem, expected)
        if not check:
            versions[component] = normalise_version(component, pin)
    return versions


# Apps
#


def _check_apps(
    value: Any, where: str, domain: str | None, problems: _Problems, require_secrets: bool = False,
    cwd: str | None = None,
) -> list[App]:
    if not isinstance(value, list | tuple):
        problems.add(f"{where}.apps", _wrong_type(value), 'a list of apps like {"name": "blog", ...}')
        return []
    apps: list[App] = []
    seen: dict[str, dict[Any, int]] = {"name": {}, "hostname": {}, "tcp_port": {}}
    for index, raw in enumerate(value):
        key = f"{where}.apps[{index}]"
        if not isinstance(raw, dict):
            problems.add(key, _wrong_type(raw), 'an app like {"name": "blog", "hostname": "blog.DOMAIN"}')
            continue
        app = _check_app(raw, key, domain, problems, require_secrets, cwd)
        if app is None:
            continue
        for field_name, first in seen.items():
            field_value = getattr(app, field_name)
            if field_value is None:
                continue
            if field_value in first:
                shown = repr(field_value) if isinstance(field_value, str) else str(field_value)
                problems.add(
                    f"{key}.{field_name}",
                    f"{shown} is also the {field_name} of apps[{first[field_value]}]",
                    f"a unique {field_name} per app",
                )
            first.setdefault(field_value, index)
        apps.append(app)
    return apps


def _check_app(
    raw: dict[Any, Any], key: str, domain: str | None, problems: _Problems, require_secrets: bool = False,
    cwd: str | None = None,
) -> App | None:
    before = len(problems.lines)
    for unknown in raw:
        if unknown not in APP_KEYS:
            problems.add(f"{key}.{unknown}", "is not an app key", f"only {', '.join(APP_KEYS)}")

    name = raw.get("name")
    if "name" not in raw:
        problems.add(f"{key}.name", "is missing", "a unique app name like blog")
    else:
        for problem, expected in _check_label(name, "app name", "blog or home-assistant"):
            problems.add(f"{key}.name", problem, expected)

    hostname = raw.get("hostname")
    if hostname is not None:
        check = _check_domain(hostname)
        for problem, expected in check:
            problems.add(f"{key}.hostname", problem, expected)
        if not check and domain and hostname != domain and not hostname.endswith(f".{domain}"):
            problems.add(
                f"{key}.hostname",
                f"{hostname!r} is not under the domain {domain!r}",
                f"{domain} or a name like NAME.{domain}",
            )

    public = raw.get("public", False)
    for problem, expected in _check_bool(public):
        problems.add(f"{key}.public", problem, expected)
    if public is True and hostname is None:
        problems.add(
            f"{key}.hostname",
            "is missing for a public app",
            f"a hostname the entrance lets in, like NAME.{domain or 'example.org'}",
        )

    proxy_protocol = raw.get("proxy_protocol", True)
    for problem, expected in _check_bool(proxy_protocol):
        problems.add(f"{key}.proxy_protocol", problem, expected)

    tcp_port = raw.get("tcp_port")
    if tcp_port is not None:
        for problem, expected in _check_port(tcp_port):
            problems.add(f"{key}.tcp_port", problem, expected)

    deployment = _check_app_deployment(raw, key, domain, problems, require_secrets, cwd)

    if len(problems.lines) > before and not (isinstance(name, str) and is_label(name)):
        return None
    return App(
        name=str(name),
        hostname=hostname if isinstance(hostname, str) and is_domain(hostname) else None,
        public=public is True,
        tcp_port=tcp_port if isinstance(tcp_port, int) and not _check_port(tcp_port) else None,
        proxy_protocol=proxy_protocol is not False,
        **deployment,
    )


_IMAGE_RE = re.compile(r"^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*"
                       r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$")
_QUANTITY_RE = {
    "storage": (re.compile(r"^[1-9][0-9]*(Mi|Gi|Ti)$"), "a size like 10Gi (Mi, Gi or Ti)"),
    "cpu": (re.compile(r"^([1-9][0-9]*m|[0-9]+(\.[0-9]+)?)$"), "CPU like 100m or 0.5"),
    "memory": (re.compile(r"^[1-9][0-9]*(Mi|Gi)$"), "memory like 256Mi or 1Gi"),
}
_PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
APP_NAME_MAX = 59  # its namespace is app-NAME, a label of at most 63


def _is_pinned_image(value: Any) -> bool:
    if not isinstance(value, str) or not _IMAGE_RE.match(value):
        return False
    if "@sha256:" in value:
        return True
    tag = value.rsplit("/", 1)[-1].partition(":")[2]
    return bool(tag) and tag != "latest"


def _check_app_backup(raw: dict[Any, Any], key: str, kind: AppKind, kind_name: str, problems: _Problems
                      ) -> dict[str, Any]:
    """An app's ``backup`` and ``backup_schedule``; returns the valid ones as ``App`` fields."""
    found: dict[str, Any] = {}
    if "backup" in raw:
        check = _check_bool(raw["backup"])
        for problem, expected in check:
            problems.add(f"{key}.backup", problem, expected + " (False: its volume is not backed up)")
        has_volume = not kind.chart and (raw.get("storage") or kind.storage)
        if not check and raw["backup"] and not has_volume:
            what = "its Helm chart's volumes" if kind.chart else "no volume (give it storage)"
            problems.add(f"{key}.backup", f"True for a {kind_name} app with {what}",
                         "False, or an app with a volume (storage)")
        elif not check:
            found["backup"] = raw["backup"]
    if raw.get("backup_schedule") is not None:
        wrong = cron_problem(raw["backup_schedule"])
        if wrong:
            problems.add(f"{key}.backup_schedule", f"{_show(raw['backup_schedule'])}: {wrong}", _CRON_EXPECTED)
        else:
            found["backup_schedule"] = raw["backup_schedule"]
    return found


_CRON_EXPECTED = "a cron schedule like '30 3 * * *' (minute hour day-of-month month day-of-week) or @daily"


def _check_app_deployment(
    raw: dict[Any, Any], key: str, domain: str | None, problems: _Problems, require_secrets: bool, cwd: str | None,
) -> dict[str, Any]:
    """The keys of an app that the cluster runs (``kind`` …); returns the valid ones as ``App`` fields."""
    found: dict[str, Any] = {}
    name = raw.get("name")
    kind_name = raw.get("kind")
    if kind_name is not None and (not isinstance(kind_name, str) or kind_name not in KINDS):
        problems.add(f"{key}.kind", f"{_show(kind_name)} is not an app kind", f"one of {', '.join(KINDS)}")
        return found
    if kind_name is not None:
        found["kind"] = kind_name
    kind = KINDS.get(kind_name) if kind_name else KINDS.get(name) if isinstance(name, str) else None
    deployed_keys = [k for k in ("image", "port", "storage", "storage_path", "env", "secrets", "resources", "backup",
                                 "backup_schedule") if k in raw]
    if kind is None:
        for unused in deployed_keys:
            problems.add(f"{key}.{unused}", "is set on an app without a kind (the cluster does not run it)",
                         f"a kind as well, one of {', '.join(KINDS)}, or no {unused}")
        return found
    if isinstance(name, str) and len(name) > APP_NAME_MAX:
        problems.add(f"{key}.name", f"{name!r} is longer than {APP_NAME_MAX} characters",
                     f"an app name of at most {APP_NAME_MAX} characters (its namespace is app-NAME)")
    if kind.http and raw.get("hostname") is None:
        problems.add(f"{key}.hostname", "is missing for an app served over https",
                     f"the name it is served at, like NAME.{domain or 'example.org'}")
    image = raw.get("image")
    if image is None and kind.image is None and not kind.chart:
        problems.add(f"{key}.image", f"is missing for a {kind_name or name} app",
                     "a container image with a pinned tag, like example/site:1.2.0")
    elif image is not None and not _is_pinned_image(image):
        problems.add(f"{key}.image", f"{_show(image)} is not an image with a pinned tag",
                     "an image with a version tag or digest, like example/site:1.2.0 (not :latest)")
    elif image is not None:
        found["image"] = image
    if "port" in raw:
        check = _check_int_range(raw["port"], 1, 65535, "the container's port, 1-65535")
        for problem, expected in check:
            problems.add(f"{key}.port", problem, expected)
        if not check:
            found["port"] = raw["port"]
    for field_name in ("storage",):
        if raw.get(field_name) is not None:
            pattern, expected = _QUANTITY_RE[field_name]
            if isinstance(raw[field_name], str) and pattern.match(raw[field_name]):
                found[field_name] = raw[field_name]
            else:
                problems.add(f"{key}.{field_name}", f"{_show(raw[field_name])} is not a size", expected)
    if raw.get("storage_path") is not None:
        if isinstance(raw["storage_path"], str) and _PATH_RE.match(raw["storage_path"]):
            found["storage_path"] = raw["storage_path"]
        else:
            problems.add(f"{key}.storage_path", f"{_show(raw['storage_path'])} is not an absolute path",
                         "where the volume is mounted in the container, like /data")
    if "env" in raw:
        env = raw["env"]
        if not isinstance(env, dict) or not all(isinstance(k, str) and _ENV_NAME_RE.match(k) and isinstance(v, str)
                                                for k, v in env.items()):
            problems.add(f"{key}.env", f"{_show(env)} is not an environment",
                         'a dict of NAME: "value" strings (secrets go in secrets)')
        else:
            found["env"] = dict(env)
    if "resources" in raw:
        resources = raw["resources"]
        if not isinstance(resources, dict):
            problems.add(f"{key}.resources", _wrong_type(resources), '{"cpu": "100m", "memory": "256Mi"}')
        else:
            for res, quantity in resources.items():
                if res not in ("cpu", "memory"):
                    problems.add(f"{key}.resources.{res}", "is not a resource", "cpu or memory")
                elif not (isinstance(quantity, str) and _QUANTITY_RE[res][0].match(quantity)):
                    problems.add(f"{key}.resources.{res}", f"{_show(quantity)} is not a quantity", _QUANTITY_RE[res][1])
            found["resources"] = {k: v for k, v in resources.items() if k in ("cpu", "memory") and isinstance(v, str)}
    found.update(_check_app_backup(raw, key, kind, str(kind_name or name), problems))
    secrets = raw.get("secrets", {})
    if not isinstance(secrets, dict):
        problems.add(f"{key}.secrets", _wrong_type(secrets),
                     'a dict of secret references like {"NAME": {"env": "VAR"}}')
        return found
    names = dict(kind.secrets)
    for secret_name, ref in secrets.items():
        if names and secret_name not in names:
            problems.add(f"{key}.secrets.{secret_name}", f"is not a secret of a {kind_name or name} app",
                         f"one of {', '.join(names)}")
            continue
        if not names and not (isinstance(secret_name, str) and _ENV_NAME_RE.match(secret_name)):
            problems.add(f"{key}.secrets.{_show(secret_name)}", "is not an environment variable name",
                         "names like API_KEY: each secret becomes that environment variable")
            continue
        for problem, expected in _check_secret(ref, require_secrets, cwd):
            problems.add(f"{key}.secrets.{secret_name}", problem, expected)
    for secret_name, (_env, required) in names.items():
        if required and secret_name not in secrets:
            problems.add(f"{key}.secrets.{secret_name}", f"is missing for a {kind_name or name} app",
                         f"{_REFERENCE_SHAPES}, e.g. {{\"env\": \"{(str(name)).upper().replace('-', '_')}_"
                         f"{secret_name.upper()}\"}}")
    found["secrets"] = dict(secrets)
    return found


# Secrets
#


def _secret_file_path(path: str, cwd: str | None) -> str:
    return path if os.path.isabs(path) else os.path.join(cwd or os.getcwd(), path)


def _check_secret(value: Any, require: bool, cwd: str | None) -> Check:
    """Shape of a secret reference; with ``require`` also that its env var or file is there."""
    if isinstance(value, HiddenValue):
        return []
    if isinstance(value, str):
        return [("is a literal secret", _REFERENCE_SHAPES)]
    # Never show the value itself: a misplaced secret would end up in the deploy's output.
    if not isinstance(value, dict):
        return [(f"{_a(_type_name(value))} is not a secret reference", _REFERENCE_SHAPES)]
    if len(value) != 1 or next(iter(value)) not in ("env", "file"):
        keys = ", ".join(sorted(repr(key) for key in value)) or "no keys"
        return [(f"a dict with {keys} is not a secret reference", _REFERENCE_SHAPES)]
    kind, ref = next(iter(value.items()))
    if kind == "env":
        if not isinstance(ref, str) or not _ENV_NAME_RE.match(ref):
            return [("the env value is not an environment variable name", '{"env": "NAME"}, e.g. K3S_TOKEN')]
        if require and not os.environ.get(ref):
            return [(f"environment variable {ref} is not set", f"the secret in ${ref} when deploying")]
        return []
    if not isinstance(ref, str) or not ref:
        return [(f"{_show(ref)} is not a file path", '{"file": "PATH"}, e.g. secrets/k3s_token')]
    path = _secret_file_path(ref, cwd)
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
    check = _check_secret(value, require=True, cwd=cwd)
    if check:
        raise ConfigError(f"{key_path}: {problem} (expected {expected})" for problem, expected in check)
    kind, ref = next(iter(value.items()))
    if kind == "env":
        return HiddenValue(os.environ[ref].strip())
    path = _secret_file_path(ref, cwd)
    with open(path, encoding="utf-8") as f:
        secret = f.read().strip()
    if not secret:
        raise ConfigError([f"{key_path}: secret file {ref} is empty (expected the secret in {path})"])
    return HiddenValue(secret)


# The inventory
#


def _cluster_value(
    inventory: Inventory, key: str, problems: _Problems, describe: str
) -> tuple[str, Any] | None:
    """
    A key that must have one value for the whole cluster: returns ``(source, value)``; a source whose
    value differs from the main one (``all`` if it sets it) is a problem.
    """
    sources = _sources(inventory, key)
    if not sources:
        return None
    main = "all" if "all" in sources else next(iter(sources))
    main_value = sources[main][0]
    for source, (value, _hosts) in sources.items():
        if source != main and value != main_value:
            problems.add(
                f"{source}.{key}",
                f"{_show(value)} differs from {main}.{key}",
                f"one {describe} for the whole cluster, set once in group_data/all.py",
            )
    return main, main_value


def _group_hosts(inventory: Inventory, group: str) -> list[Host]:
    return list(inventory.get_group(group, default=[]))


def _check_groups(inventory: Inventory, problems: _Problems) -> None:
    def names(hosts: list[Host]) -> str:
        return ", ".join(host.name for host in hosts)

    headscale = _group_hosts(inventory, HEADSCALE)
    if len(headscale) != 1:
        found = f"{len(headscale)} hosts ({names(headscale)})" if headscale else "no hosts"
        problems.add(HEADSCALE, found, "exactly one headscale host")
    if not _group_hosts(inventory, ENTRANCE):
        problems.add(ENTRANCE, "no hosts", "at least one entrance host, with a public IP")
    servers = _group_hosts(inventory, K3S_SERVERS)
    if not servers:
        problems.add(K3S_SERVERS, "no hosts", "at least one k3s server")
    elif len(servers) % 2 == 0:
        problems.add(
            K3S_SERVERS,
            f"{len(servers)} hosts ({names(servers)})",
            "an odd number of k3s servers, e.g. 1 or 3, so embedded etcd keeps quorum",
        )
    for host in _group_hosts(inventory, K3S_AGENTS):
        if host in servers:
            problems.add(
                K3S_AGENTS,
                f"{host.name} is also in {K3S_SERVERS}",
                f"each k3s node in {K3S_SERVERS} or {K3S_AGENTS}, not both",
            )


def _check_per_source(
    inventory: Inventory, key: str, check: Any, problems: _Problems
) -> dict[str, tuple[Any, bool]]:
    """Check each distinct value of a per-host key once, at its source; returns source -> (value, ok)."""
    results: dict[str, tuple[Any, bool]] = {}
    for source, (value, _hosts) in _sources(inventory, key).items():
        found = check(value)
        for problem, expected in found:
            problems.add(f"{source}.{key}", problem, expected)
        results[source] = (value, not found)
    return results


# Tailnet (headscale + tailscale)
#

_TAG_RE = re.compile(r"^tag:[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_ENV_VALUE_RE = re.compile(r'^[^"\\$`\n]*$')


def _tailnet_value(
    inventory: Inventory, key: str, problems: _Problems, defaults: Mapping[str, Any]
) -> tuple[str, Any]:
    found = _cluster_value(inventory, key, problems, key.replace("_", " "))
    return found if found is not None else ("all", defaults.get(key, _MISSING))


def _check_tailnet(inventory: Inventory, problems: _Problems) -> TailnetConfig | None:
    """Validate the tailnet keys (see deploys.headscale and deploys.tailscale for their defaults)."""
    before = len(problems.lines)
    source, url = _tailnet_value(inventory, "headscale_url", problems, HEADSCALE_DEFAULTS)
    _, allow_http = _tailnet_value(inventory, "headscale_allow_http", problems, {"headscale_allow_http": False})
    url_host = ""
    if url is _MISSING:
        problems.add("all.headscale_url", "is missing", "the URL nodes reach headscale at, like https://headscale.DOMAIN")
    elif not isinstance(url, str) or "://" not in url:
        problem = _wrong_type(url) if not isinstance(url, str) else f"{url!r} is not a URL"
        problems.add(f"{source}.headscale_url", problem, "a URL like https://headscale.example.org")
    else:
        scheme, _, rest = url.partition("://")
        url_host = rest.split("/", 1)[0].rsplit(":", 1)[0] if not rest.startswith("[") else ""
        if scheme != "https" and not (scheme == "http" and allow_http is True):
            problems.add(f"{source}.headscale_url", f"{url!r} is not https",
                         "https:// (plain http only in the local lab, with headscale_allow_http = True)")
        elif not (is_domain(url_host) or _is_host_or_ip(url_host)) or rest.endswith("/"):
            problems.add(f"{source}.headscale_url", f"{url!r} has no valid host",
                         "a URL like https://headscale.example.org, without a trailing slash")
    source, base = _tailnet_value(inventory, "tailnet_domain", problems, {})
    if base is _MISSING:
        problems.add("all.tailnet_domain", "is missing", "the MagicDNS base domain, like tailnet.example.org")
    else:
        for problem, expected in _check_domain(base):
            problems.add(f"{source}.tailnet_domain", problem, expected)
        if isinstance(base, str) and url_host and (url_host == base or url_host.endswith("." + base)):
            problems.add(f"{source}.tailnet_domain", f"{base!r} contains headscale's own name {url_host!r}",
                         "a MagicDNS domain that differs from the headscale_url domain, like tailnet.example.org")
    source, admins = _tailnet_value(inventory, "tailnet_admins", problems, HEADSCALE_DEFAULTS)
    _check_str_list(admins, f"{source}.tailnet_admins", "headscale user names like admin", is_label, "user name",
                    problems)
    source, derp = _tailnet_value(inventory, "tailnet_derp", problems, HEADSCALE_DEFAULTS)
    if derp not in ("tailscale", "embedded"):
        problems.add(f"{source}.tailnet_derp", f"{_show(derp)} is not a DERP mode", "'tailscale' or 'embedded'")
    source, nameservers = _tailnet_value(inventory, "tailnet_nameservers", problems, HEADSCALE_DEFAULTS)
    _check_str_list(nameservers, f"{source}.tailnet_nameservers", "resolver IP addresses", _is_ip, "address",
                    problems)
    source, tags = _tailnet_value(inventory, "tailnet_tags", problems, {"tailnet_tags": []})
    _check_str_list(tags, f"{source}.tailnet_tags", "tags like tag:nas", lambda t: bool(_TAG_RE.match(t)), "tag",
                    problems)
    known_tags = set(BUILTIN_TAGS) | set(tags if isinstance(tags, list) else [])
    source, grants = _tailnet_value(inventory, "tailnet_extra_grants", problems, HEADSCALE_DEFAULTS)
    if not isinstance(grants, list) or not all(isinstance(g, dict) and {"src", "dst"} <= set(g) for g in grants):
        problems.add(f"{source}.tailnet_extra_grants", "is not a list of grants",
                     'a list like [{"src": ["group:admins"], "dst": ["tag:k3s"], "ip": ["tcp:22"]}]')
    source, ingress = _tailnet_value(inventory, "ingress_address", problems, {"ingress_address": None})
    if ingress is not None and not (isinstance(ingress, str) and _is_ipv4(ingress)):
        problems.add(f"{source}.ingress_address", f"{_show(ingress)} is not an IPv4 address",
                     "the cluster ingress address private app names resolve to, or None for the first k3s server")
    source, sha = _tailnet_value(inventory, "headscale_sha256", problems, HEADSCALE_DEFAULTS)
    if sha is not None and not (isinstance(sha, str) and _HEX64_RE.match(sha)):
        problems.add(f"{source}.headscale_sha256", f"{_show(sha)} is not a sha256", "64 lower-case hex digits or None")

    _check_headscale_backup(inventory, problems)

    source, derp_ipv4 = _tailnet_value(inventory, "headscale_derp_ipv4", problems, {"headscale_derp_ipv4": None})
    if derp_ipv4 is not None and not (isinstance(derp_ipv4, str) and _is_ipv4(derp_ipv4)):
        problems.add(f"{source}.headscale_derp_ipv4", f"{_show(derp_ipv4)} is not an IPv4 address",
                     "the public IPv4 of the headscale host for its embedded DERP relay, or None")
    source, versions = _tailnet_value(inventory, "versions", problems, {"versions": {}})
    client = versions.get("tailscale") if isinstance(versions, dict) else None
    match = _SEMVER_RE.match(client) if isinstance(client, str) else None
    if match and not (1, 80) <= tuple(int(x) for x in match.group(1).split(".")[:2]) <= (1, 98):
        problems.add(f"{source}.versions.tailscale", f"{client!r} is not a client headscale 0.29 accepts",
                     "a tailscale version from 1.80 to 1.98")

    # Per host
    methods = "'apt' (the official repository) or 'static' (the tarball)"
    _check_per_source(
        inventory, "tailscale_install",
        lambda v: [] if v in ("apt", "static") else [(f"{_show(v)} is not an install method", methods)], problems,
    )
    for key in ("tailscale_accept_dns", "tailscale_accept_routes", "tailscale_upload_logs", "headscale_allow_http"):
        _check_per_source(inventory, key, _check_bool, problems)
    _check_per_source(inventory, "tailscaled_port", _check_port, problems)
    _check_per_source(inventory, "tailscale_tags", lambda v: _check_tags(v, known_tags), problems)
    _check_per_source(inventory, "tailscale_advertise_routes", _check_routes, problems)
    _check_per_source(inventory, "tailscaled_env", _check_env, problems)
    _check_per_source(inventory, "tailscale_mtu", _check_mtu, problems)
    for host in inventory:
        mtu_source, mtu = _lookup(inventory, host, "tailscale_mtu")
        env_source, env = _lookup(inventory, host, "tailscaled_env")
        if mtu not in (None, _MISSING) and isinstance(env, dict) and "TS_DEBUG_MTU" in env:
            problems.add(f"{env_source}.tailscaled_env", f"sets TS_DEBUG_MTU while {mtu_source}.tailscale_mtu is set",
                         "the MTU in tailscale_mtu only")
    routes: dict[str, set[str]] = {}
    for host in inventory:
        _, host_routes = _lookup(inventory, host, "tailscale_advertise_routes")
        _, extra = _lookup(inventory, host, "tailscale_tags")
        if isinstance(host_routes, list) and not _check_routes(host_routes):
            for cidr in host_routes:
                routes.setdefault(cidr, set()).update(
                    host_tags(set(host.groups), extra if isinstance(extra, list) else [])
                )
    _check_entrance_upstream(inventory, routes, problems)
    _check_entrance_limits(inventory, problems)
    if len(problems.lines) > before:
        return None
    return TailnetConfig(
        headscale_url=url, domain=base, admins=list(admins), tags=list(tags), extra_grants=list(grants),
        ingress_address=ingress, routes={cidr: sorted(t) for cidr, t in routes.items()},
        pod_cidrs=_pod_cidrs(inventory) if _native_k3s_hosts(inventory) else [],
    )


def _check_entrance_limits(inventory: Inventory, problems: _Problems) -> None:
    """The entrance's limits against hostile clients (see ``ENTRANCE_DEFAULTS``)."""
    checks = {
        "entrance_preread_timeout": lambda v: _check_int_range(
            v, 1, 60, "whole seconds 1-60 a client may take to send its TLS ClientHello"),
        "entrance_connections_per_address": lambda v: _check_int_range(
            v, 1, 100000, "connections one client address may hold open, 1-100000, or 0 for no limit", or_zero=True),
        "entrance_worker_connections": lambda v: _check_int_range(
            v, 512, 262144, "connections per nginx worker, 512-262144"),
    }
    for key, check in checks.items():
        _check_per_source(inventory, key, check, problems)


def _check_entrance_upstream(inventory: Inventory, routes: dict[str, set[str]], problems: _Problems) -> None:
    """``entrance_upstream``: "nodes", or an IPv4 inside a subnet some host advertises, on an entrance that
    accepts routes (MetalLB answers ARP on the LAN only; the tailnet reaches it through that route)."""
    for source, (value, hosts) in _sources(inventory, "entrance_upstream").items():
        if value == "nodes":
            continue
        if not (isinstance(value, str) and _is_ipv4(value)):
            problems.add(f"{source}.entrance_upstream", f"{_show(value)} is not 'nodes' or an IPv4 address",
                         "'nodes' (every k3s node's tailnet address) or the ingress IP, e.g. a MetalLB address")
            continue
        address = ipaddress.IPv4Address(value)
        if not any(address in ipaddress.ip_network(cidr) for cidr in routes):
            problems.add(f"{source}.entrance_upstream", f"{value} is in no subnet a host advertises",
                         "a tailscale_advertise_routes entry on a LAN node that covers it, e.g. the MetalLB pool")
        for host in hosts:
            if ENTRANCE in host.groups and _lookup(inventory, host, "tailscale_accept_routes")[1] is not True:
                problems.add(f"{host.name}.tailscale_accept_routes", "is not True, so the entrance cannot reach "
                             f"entrance_upstream {value} through its subnet route", "True on entrance hosts")


_ABS_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]+$")
_CALENDAR_RE = re.compile(r"^[A-Za-z0-9 *:,./~-]+$")


def _check_headscale_backup(inventory: Inventory, problems: _Problems) -> None:
    """The headscale backup keys, and that a backup to restore is one (checked here, before any host is touched)."""
    from portable_k3s.operations.headscale import backup_problems

    checks = {
        "headscale_backup": _check_bool,
        "headscale_backup_dir": lambda v: [] if isinstance(v, str) and _ABS_PATH_RE.match(v) and ".." not in v
        else [(f"{_show(v)} is not an absolute path", "a directory on the headscale host: /var/backups/headscale")],
        "headscale_backup_keep": lambda v: _check_int_range(v, 1, 1000, "a number of archives 1-1000"),
        "headscale_backup_schedule": lambda v: [] if isinstance(v, str) and _CALENDAR_RE.match(v) else [
            (f"{_show(v)} is not a calendar expression", "a systemd OnCalendar= value, like daily or *-*-* 03:00")],
        "headscale_restore": lambda v: [] if v is None else [
            (problem, "None, or the path of a backup archive made by the headscale deploy (headscale-….tar.gz)")
            for problem in (backup_problems(v) if isinstance(v, str) else [f"{_show(v)} is not a path"])],
        "headscale_backup_s3": lambda v: _check_s3(v, "backups", ("insecure",)),
    }
    for key, check in checks.items():
        _check_per_source(inventory, key, check, problems)
    for host in _group_hosts(inventory, HEADSCALE):
        if _lookup(inventory, host, "headscale_backup_s3")[1] not in (None, _MISSING):
            for key in ("s3_access_key", "s3_secret_key"):
                if _lookup(inventory, host, key)[1] in (None, _MISSING):
                    problems.add(f"{host.name}.{key}", "is missing while headscale_backup_s3 is set",
                                 f"{_REFERENCE_SHAPES}, for the S3 bucket's key")


def _check_public_ipv4(value: Any) -> Check:
    if value is None or (isinstance(value, str) and _is_ipv4(value)):
        return []
    return [(f"{_show(value)} is not an IPv4 address", "the host's public IPv4, e.g. 203.0.113.10, or None")]


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
        return True
    except ValueError:
        return False


def _check_tags(value: Any, known: set[str]) -> Check:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        return [(_wrong_type(value), "a list of tags like ['tag:nas']")]
    unknown = [t for t in value if t not in known]
    if unknown:
        return [(f"unknown tags {unknown}", f"tags defined by the deploy or in tailnet_tags: {sorted(known)}")]
    return []


def _check_routes(value: Any) -> Check:
    if not isinstance(value, list):
        return [(_wrong_type(value), "a list of subnets like ['192.168.1.0/24']")]
    for cidr in value:
        try:
            net = ipaddress.ip_network(cidr, strict=True) if isinstance(cidr, str) else None
        except ValueError:
            net = None
        if net is None or net.prefixlen == 0:
            return [(f"{_show(cidr)} is not a subnet", "networks like 192.168.1.0/24 (use exit_nodes for 0.0.0.0/0)")]
    return []


def _check_mtu(value: Any) -> Check:
    if value is None:
        return []
    return _check_int_range(value, 1280, 1420, "null (tailscale's 1280) or an MTU from 1280 to 1420 (1420: a "
                            "1500-byte path; 1412 over PPPoE)")


def _check_env(value: Any) -> Check:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and _ENV_NAME_RE.match(k) and isinstance(v, str) and _ENV_VALUE_RE.match(v)
        for k, v in value.items()
    ):
        return [(f"{_show(value)} is not an environment", 'a dict of NAME: "value" without quotes, $ or backticks')]
    return []


# Node baseline
#
# The keys deploys.node_baseline reads (its DEFAULTS are the defaults), limits from operations.hardware. Each
# distinct value is checked once, where it is set. pyinfra replaces a dict whole: a host's firmware_policy
# replaces its group's, and a check it leaves out takes the default.

_POLICY_LEVELS = ", ".join(map(repr, hardware_ops.POLICY_LEVELS[:-1])) + f" or {hardware_ops.POLICY_LEVELS[-1]!r}"
_THRESHOLDS_EXAMPLE = '{"start": 40, "stop": 80}'

NodeCheck = list[tuple[str, str, str]]  # (key path below the key, problem, expected)


def _check_int_range(value: Any, low: int, high: int, expected: str, or_zero: bool = False) -> Check:
    if not isinstance(value, int) or isinstance(value, bool):
        return [(_wrong_type(value), expected)]
    if not (low <= value <= high or (or_zero and value == 0)):
        return [(f"{value} is out of range", expected)]
    return []


def _check_firmware_policy(value: Any) -> NodeCheck:
    checks = tuple(NODE_BASELINE_DEFAULTS["firmware_policy"])
    if not isinstance(value, dict):
        example = ", ".join(f'"{check}": "warn"' for check in checks)
        return [("", _wrong_type(value), f"a dict like {{{example}}}")]
    found: NodeCheck = []
    for check, level in value.items():
        if check not in checks:
            found.append((f".{check}", "is not a firmware check", " or ".join(checks)))
        elif not isinstance(level, str) or level not in hardware_ops.POLICY_LEVELS:
            found.append((f".{check}", f"{_show(level)} is not a policy level", _POLICY_LEVELS))
    return found


def _check_battery_thresholds(value: Any) -> NodeCheck:
    low, high = hardware_ops.BATTERY_THRESHOLD_RANGE
    expected = f"percentages with {low - 1} < start < stop <= {high}, like {_THRESHOLDS_EXAMPLE}"
    if value is None:
        return []
    if not isinstance(value, dict):
        return [("", _wrong_type(value), f"a dict like {_THRESHOLDS_EXAMPLE}, or None to leave them alone")]
    found: NodeCheck = [(f".{key}", "is not a threshold", "start and stop") for key in value if key not in
                        ("start", "stop")]
    for key in ("start", "stop"):
        if key not in value:
            found.append((f".{key}", "is missing", expected))
        else:
            found += [(f".{key}", problem, expected) for problem, expected in
                      _check_int_range(value[key], low, high, expected)]
    if not found and value["start"] >= value["stop"]:
        found.append(("", f"start {value['start']} is not below stop {value['stop']}", expected))
    return found


def _node_checks() -> dict[str, Any]:
    """Each node baseline key and the check for one of its values."""

    def flat(check: Any) -> Any:
        return lambda value: [("", problem, expected) for problem, expected in check(value)]

    watchdog_low, watchdog_high = hardware_ops.WATCHDOG_SEC_RANGE
    panic_low, panic_high = hardware_ops.PANIC_REBOOT_SEC_RANGE
    blank_low, blank_high = hardware_ops.CONSOLE_BLANK_MINUTES_RANGE
    checks = {
        "firmware_policy": _check_firmware_policy,
        "laptop": flat(_check_bool),
        "battery_charge_thresholds": _check_battery_thresholds,
        "console_blank_minutes": flat(lambda v: _check_int_range(
            v, blank_low, blank_high, f"whole minutes {blank_low}-{blank_high} (0: never blank)")),
        "watchdog_sec": flat(lambda v: _check_int_range(
            v, watchdog_low, watchdog_high, f"0 (off) or {watchdog_low}-{watchdog_high} seconds", or_zero=True)),
        "kernel_panic_reboot_sec": flat(lambda v: _check_int_range(
            v, panic_low, panic_high, f"seconds {panic_low}-{panic_high} (0: stay halted after a panic)")),
        "kernel_panic_on_oops": flat(_check_bool),
    }
    assert set(checks) == set(NODE_BASELINE_DEFAULTS), "every node baseline key has a check"
    return checks


def _check_node_baseline(inventory: Inventory, problems: _Problems) -> None:
    """Validate the node baseline keys (firmware policy, laptop settings, watchdog, kernel panic)."""
    for key, check in _node_checks().items():
        for source, (value, _hosts) in _sources(inventory, key).items():
            for path, problem, expected in check(value):
                problems.add(f"{source}.{key}{path}", problem, expected)


# k3s
#

K3S_DISABLE = ("coredns", "servicelb", "traefik", "local-storage", "metrics-server", "runtimes")
K3S_TAILNET_MODES = ("manual", "native")
DEFAULT_POD_CIDR = "10.42.0.0/16"  # k3s's cluster-cidr
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_K8S_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_LABEL_KEY = rf"(([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/)?{_K8S_NAME}"
_NODE_LABEL_RE = re.compile(rf"^{_LABEL_KEY}={_K8S_NAME}?$")
_NODE_TAINT_RE = re.compile(rf"^{_LABEL_KEY}(={_K8S_NAME})?:({'|'.join(TAINT_EFFECTS)})$")
_CRON_RE = re.compile(r"^\S+( \S+){4}$")
_FLAG_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_IFACE_RE = re.compile(r"^[A-Za-z0-9._-]{1,15}$")


def _check_s3(value: Any, bucket: str = "etcd", options: tuple[str, ...] = ()) -> Check:
    """An S3 location: ``{"endpoint", "bucket", "region", "folder", *options}``, or None."""
    if value is None:
        return []
    extra = "".join(f', "{option}": …' for option in options)
    shape = f'{{"endpoint": "s3.example.org", "bucket": "{bucket}", "region": …, "folder": …{extra}}} or None'
    if not isinstance(value, dict):
        return [(_wrong_type(value), shape)]
    problems: Check = []
    if not isinstance(value.get("endpoint", ""), str) or "://" in value.get("endpoint", ""):
        problems.append((f"endpoint {_show(value.get('endpoint'))} is not a host name", shape + " (no https://)"))
    unknown = sorted(set(value) - {"endpoint", "bucket", "region", "folder", *options})
    if unknown:
        problems.append((f"unknown keys {unknown}", shape))
    for key in ("endpoint", "bucket"):
        if not isinstance(value.get(key), str) or not value.get(key):
            problems.append((f"{key} is missing", shape))
    return problems


def _check_etcd_s3(value: Any) -> Check:
    """``k3s_etcd_s3``: an S3 location with ``insecure`` (True: plain http, k3s's ``etcd-s3-insecure``)."""
    problems = _check_s3(value, "etcd", ("insecure",))
    if isinstance(value, dict) and "insecure" in value and not isinstance(value["insecure"], bool):
        problems.append((f"insecure {_show(value['insecure'])} is not True or False",
                         "True (plain http, e.g. a store on the tailnet) or False (https)"))
    return problems


_REGISTRY_RE = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?)$")
_REGISTRIES_SHAPE = ('{"mirrors": {"docker.io": {"endpoint": ["https://registry.lan:5000"]}}, "configs": '
                     '{"registry.lan:5000": {"auth": {"username": "me", "password": {"env": "REGISTRY_PASSWORD"}}, '
                     '"tls": {"ca_file": "/etc/ssl/lan-ca.pem"}}}} or None')


def _check_registries(value: Any) -> Check:
    """k3s's registries.yaml as data: ``mirrors`` (endpoint URLs, rewrite rules) and ``configs`` (auth as secret
    references, tls files), or None."""
    from portable_k3s.deploys.k3s import REGISTRY_SECRETS  # noqa: PLC0415 - the deploy imports this module

    if value is None:
        return []
    if not isinstance(value, dict):
        return [(_wrong_type(value), _REGISTRIES_SHAPE)]
    problems: Check = []
    for key in sorted(set(value) - {"mirrors", "configs"}, key=str):
        problems.append((f"unknown key {_show(key)}", '"mirrors" and "configs", as in k3s\'s registries.yaml'))
    for part in ("mirrors", "configs"):
        if not isinstance(value.get(part, {}), dict):
            problems.append((f"{part}: {_wrong_type(value[part])}", f"a dict by registry name: {_REGISTRIES_SHAPE}"))
    mirrors: dict[Any, Any] = value["mirrors"] if isinstance(value.get("mirrors"), dict) else {}
    configs: dict[Any, Any] = value["configs"] if isinstance(value.get("configs"), dict) else {}
    for name, mirror in mirrors.items():
        where = f"mirrors[{_show(name)}]"
        if not isinstance(name, str) or not _REGISTRY_RE.match(name):
            problems.append((f"{where}: not a registry name", "a registry host[:port] like docker.io, or *"))
        if not isinstance(mirror, dict):
            problems.append((f"{where}: {_wrong_type(mirror)}", '{"endpoint": ["https://…"], "rewrite": {…}}'))
            continue
        for key in sorted(set(mirror) - {"endpoint", "rewrite"}, key=str):
            problems.append((f"{where}: unknown key {_show(key)}", '"endpoint" and "rewrite"'))
        endpoints = mirror.get("endpoint", [])
        if not isinstance(endpoints, list) or not all(
            isinstance(e, str) and e.startswith(("https://", "http://")) and len(e) > 8 for e in endpoints
        ):
            problems.append((f"{where}.endpoint: {_show(endpoints)} is not a list of URLs",
                             'registry URLs like ["https://registry.lan:5000"]'))
        rewrite = mirror.get("rewrite", {})
        if not isinstance(rewrite, dict):
            problems.append((f"{where}.rewrite: {_wrong_type(rewrite)}", '{"^rancher/(.*)": "mirror/rancher/$1"}'))
            continue
        for pattern, target in rewrite.items():
            try:
                re.compile(pattern)
                valid = isinstance(target, str)
            except (re.error, TypeError):
                valid = False
            if not valid:
                problems.append((f"{where}.rewrite: {_show(pattern)} -> {_show(target)} is not a rewrite rule",
                                 "a regular expression mapped to the repository to pull instead"))
    for name, config in configs.items():
        where = f"configs[{_show(name)}]"
        if not isinstance(name, str) or not _REGISTRY_RE.match(name):
            problems.append((f"{where}: not a registry name", "a registry host[:port] like registry.lan:5000, or *"))
        if not isinstance(config, dict):
            problems.append((f"{where}: {_wrong_type(config)}", '{"auth": {…}, "tls": {…}}'))
            continue
        for key in sorted(set(config) - {"auth", "tls"}, key=str):
            problems.append((f"{where}: unknown key {_show(key)}", '"auth" and "tls"'))
        auth = config.get("auth", {})
        if not isinstance(auth, dict):
            problems.append((f"{where}.auth: {_wrong_type(auth)}", '{"username": …, "password": {"env": …}}'))
            auth = {}
        for key in sorted(set(auth) - {"username", *REGISTRY_SECRETS}, key=str):
            problems.append((f"{where}.auth: unknown key {_show(key)}",
                             f"username, {', '.join(REGISTRY_SECRETS)}"))
        if "username" in auth and not isinstance(auth["username"], str):
            problems.append((f"{where}.auth.username: {_wrong_type(auth['username'])}", "the user name"))
        for key in REGISTRY_SECRETS:
            if key in auth:
                problems += [(f"{where}.auth.{key}: {problem}", expected)
                             for problem, expected in _check_secret(auth[key], require=False, cwd=None)]
        tls = config.get("tls", {})
        if not isinstance(tls, dict):
            problems.append((f"{where}.tls: {_wrong_type(tls)}", '{"ca_file": "/etc/ssl/lan-ca.pem"}'))
            continue
        for key, item in tls.items():
            if key in ("cert_file", "key_file", "ca_file"):
                if not isinstance(item, str) or not item.startswith("/"):
                    problems.append((f"{where}.tls.{key}: {_show(item)} is not an absolute path",
                                     "a file on the node, like /etc/ssl/lan-ca.pem"))
            elif key == "insecure_skip_verify":
                if not isinstance(item, bool):
                    problems.append((f"{where}.tls.{key}: {_wrong_type(item)}", "true or false"))
            else:
                problems.append((f"{where}.tls: unknown key {_show(key)}",
                                 "cert_file, key_file, ca_file, insecure_skip_verify"))
    return problems


def _check_k3s_extra(value: Any) -> Check:
    from portable_k3s.operations.k3s import MANAGED_KEYS  # noqa: PLC0415 - the operations import this module's users

    if not isinstance(value, dict):
        return [(_wrong_type(value), 'a dict of k3s flags, like {"kube-proxy-arg": ["proxy-mode=ipvs"]}')]
    problems: Check = []
    for key in value:
        if not isinstance(key, str) or not _FLAG_RE.match(key):
            problems.append((f"{_show(key)} is not a k3s flag name", "flag names without --, like kubelet-arg"))
        elif key in MANAGED_KEYS:
            problems.append((f"{key!r} is set by the deploy from the tailnet",
                             "other k3s flags; node-ip, server, token and the like come from the tailnet"))
    return problems


def _k3s_checks() -> dict[str, Any]:
    """Each k3s key and the check for one of its values."""

    def str_list(pattern: re.Pattern[str], expected: str) -> Any:
        def check(value: Any) -> Check:
            if not isinstance(value, list | tuple):
                return [(_wrong_type(value), f"a list of {expected}")]
            return [(f"{_show(v)} is not valid", expected) for v in value if not isinstance(v, str) or
                    not pattern.match(v)]
        return check

    def seconds(value: Any) -> Check:
        return _check_int_range(value, 10, 3600, "whole seconds 10-3600")

    return {
        "k3s_download_url": lambda v: [] if isinstance(v, str) and v.startswith(("https://", "http://"))
        else [(_show(v) + " is not a URL", "the base of k3s's release downloads, like https://…/releases/download")],
        "k3s_sha256": lambda v: [] if v is None or (isinstance(v, str) and _HEX64_RE.match(v))
        else [(f"{_show(v)} is not a sha256", "64 lower-case hex digits, or None to use the release checksums")],
        "k3s_token": lambda v: [],  # a secret: checked with the other secrets
        "k3s_airgap_images": _check_bool,
        "k3s_tailnet_iface": lambda v: [] if isinstance(v, str) and _IFACE_RE.match(v)
        else [(f"{_show(v)} is not an interface name", "the tailnet interface, tailscale0")],
        "k3s_tailnet_mode": lambda v: [] if v in K3S_TAILNET_MODES
        else [(f"{_show(v)} is not a tailnet mode", "'manual' (node-ip and flannel-iface on tailscale0) or 'native' "
               "(k3s's own vpn-auth tailscale integration)")],
        "k3s_cluster_init": _check_bool,
        "k3s_disable": lambda v: [] if isinstance(v, list | tuple) and all(x in K3S_DISABLE for x in v)
        else [(f"{_show(v)} is not a list of k3s components", f"a list of {', '.join(K3S_DISABLE)}")],
        "k3s_node_labels": str_list(_NODE_LABEL_RE, "key=value node labels, like disk=ssd"),
        "k3s_node_taints": str_list(
            _NODE_TAINT_RE, f"key=value:Effect taints, Effect one of {', '.join(TAINT_EFFECTS)}"
        ),
        "k3s_etcd_snapshot_schedule": lambda v: [] if v is None or (isinstance(v, str) and _CRON_RE.match(v))
        else [(f"{_show(v)} is not a cron schedule", "five cron fields like '0 */6 * * *', or None for no snapshots")],
        "k3s_etcd_snapshot_retention": lambda v: _check_int_range(v, 1, 1000, "a number of snapshots, 1-1000"),
        "k3s_etcd_s3": _check_etcd_s3,
        "k3s_extra_config": _check_k3s_extra,
        "k3s_registries": _check_registries,
        "k3s_drain_timeout": seconds,
        "k3s_ready_timeout": seconds,
        "k3s_state": lambda v: [] if v in ("present", "absent")
        else [(f"{_show(v)} is not a state", "'present' or 'absent' (uninstall k3s from the node)")],
        "k3s_remove_data": _check_bool,
        "k3s_move_from": lambda v: [] if v is None or (isinstance(v, str) and v.strip())
        else [(_show(v) + " is not a host name", "the inventory name of the server whose cluster the first server "
               "takes over, or None")],
        "k3s_kubeconfig": lambda v: [] if v is None or (isinstance(v, str) and v.strip())
        else [(_show(v) + " is not a path", "a path on the machine running pyinfra, or None to not fetch it")],
    }


def _native_k3s_hosts(inventory: Inventory) -> list[Host]:
    """k3s nodes in the "native" tailnet mode (k3s's own tailscale integration)."""
    nodes = _group_hosts(inventory, K3S_SERVERS) + _group_hosts(inventory, K3S_AGENTS)
    return [host for host in dict.fromkeys(nodes) if _lookup(inventory, host, "k3s_tailnet_mode")[1] == "native"]


def _pod_cidrs(inventory: Inventory) -> list[str]:
    """The cluster's IPv4 pod networks: ``cluster-cidr`` of the first server's k3s_extra_config, else k3s's."""
    servers = _group_hosts(inventory, K3S_SERVERS)
    extra = _lookup(inventory, servers[0], "k3s_extra_config")[1] if servers else None
    value = extra.get("cluster-cidr", DEFAULT_POD_CIDR) if isinstance(extra, dict) else DEFAULT_POD_CIDR
    cidrs = value if isinstance(value, list) else str(value).split(",")
    return [cidr.strip() for cidr in cidrs if "." in str(cidr)]


def _check_native_mode(inventory: Inventory, nodes: list[Host], problems: _Problems) -> None:
    """The tailnet mode is one for the whole cluster (flannel's backend follows it); a "native" node leaves its
    routes to k3s (its flannel runs ``tailscale set --advertise-routes=<pod subnet>``) and uses tailscale0."""
    modes = {host.name: _lookup(inventory, host, "k3s_tailnet_mode")[1] for host in nodes}
    modes = {name: K3S_DEFAULTS["k3s_tailnet_mode"] if mode is _MISSING else mode for name, mode in modes.items()}
    if len(set(map(str, modes.values()))) > 1:
        shown = ", ".join(f"{name}={mode}" for name, mode in modes.items())
        problems.add(f"{K3S_SERVERS}.k3s_tailnet_mode", f"differs between k3s nodes ({shown})",
                     "one mode for every k3s node: flannel's backend follows it, cluster-wide")
    found: dict[str, tuple[str, str]] = {}  # one problem per place a key is set, not per host
    for host in _native_k3s_hosts(inventory):
        source, routes = _lookup(inventory, host, "tailscale_advertise_routes")
        if routes not in (_MISSING, None, []):
            found[f"{source}.tailscale_advertise_routes"] = (
                "is set on nodes with k3s_tailnet_mode 'native'",
                "no routes on native-mode nodes (k3s replaces them with the pod subnet), or mode 'manual'")
        if EXIT_NODES in host.groups:
            found[f"{host.name}.k3s_tailnet_mode"] = (
                "'native' on an exit node", "'manual' (k3s's flannel would replace the exit-node routes)")
        source, iface = _lookup(inventory, host, "k3s_tailnet_iface")
        if iface not in (_MISSING, "tailscale0"):
            found[f"{source}.k3s_tailnet_iface"] = (
                f"{_show(iface)} with k3s_tailnet_mode 'native'",
                "tailscale0 (k3s's tailscale integration uses that interface)")
    for key, (problem, expected) in found.items():
        problems.add(key, problem, expected)


def _check_k3s(inventory: Inventory, problems: _Problems, require_secrets: bool, cwd: str | None) -> None:
    """Validate the k3s keys (defaults in deploys.k3s.K3S_DEFAULTS) and what HA with embedded etcd needs."""
    checks = _k3s_checks()
    assert set(checks) == set(K3S_DEFAULTS), "every k3s key has a check"
    for key, check in checks.items():
        _check_per_source(inventory, key, check, problems)
    _check_per_source(inventory, "k3s_lan", lambda v: _check_slug(v), problems)
    _check_per_source(inventory, "k3s_etcd_across_vpn", _check_bool, problems)
    servers = _group_hosts(inventory, K3S_SERVERS)
    for host in servers:
        s3 = _lookup(inventory, host, "k3s_etcd_s3")[1]
        if s3 not in (None, _MISSING):
            for key in ("s3_access_key", "s3_secret_key"):
                if _lookup(inventory, host, key)[1] in (None, _MISSING):
                    problems.add(f"{host.name}.{key}", "is missing while k3s_etcd_s3 is set",
                                 f'{_REFERENCE_SHAPES}, for the S3 bucket\'s key')
    nodes = servers + [h for h in _group_hosts(inventory, K3S_AGENTS) if h not in servers]
    _check_native_mode(inventory, nodes, problems)
    if servers and _lookup(inventory, servers[0], "k3s_state")[1] == "absent":
        staying = [h.name for h in nodes[1:] if _lookup(inventory, h, "k3s_state")[1] != "absent"]
        if staying:
            problems.add(f"{servers[0].name}.k3s_state", "'absent' on the first server while "
                         f"{', '.join(staying)} keep k3s", "the first of k3s_servers removed last (every other "
                         "node joins it), or another server listed first")
    _check_server_move(inventory, servers, nodes, problems)
    if len(servers) > 1:
        # Embedded etcd needs low latency between its members: upstream does not support it across a VPN/WAN.
        lans = {host.name: _lookup(inventory, host, "k3s_lan")[1] for host in servers}
        override = all(_lookup(inventory, host, "k3s_etcd_across_vpn")[1] is True for host in servers)
        if not override and (_MISSING in lans.values() or len(set(lans.values())) != 1):
            shown = ", ".join(f"{name}={'unset' if lan is _MISSING else lan}" for name, lan in lans.items())
            problems.add(
                K3S_SERVERS + ".k3s_lan",
                f"{len(servers)} servers with embedded etcd, not all on one LAN ({shown})",
                "the same k3s_lan (e.g. 'home') on every server: etcd is not supported across a VPN; "
                "or k3s_etcd_across_vpn = True on every server to accept that risk",
            )


def _check_server_move(inventory: Inventory, servers: list[Host], nodes: list[Host], problems: _Problems) -> None:
    """``k3s_move_from``: set on the first server only, naming a host of the inventory that left the k3s groups."""
    for source, (value, hosts) in _sources(inventory, "k3s_move_from").items():
        if not isinstance(value, str) or not value.strip():
            continue
        elsewhere = [h.name for h in hosts if not servers or h is not servers[0]]
        if elsewhere:
            first = servers[0].name if servers else "none"
            problems.add(f"{source}.k3s_move_from", f"applies to {', '.join(elsewhere)}, not only to the first "
                         f"server ({first})", "k3s_move_from in the host data of the first of k3s_servers only")
            continue
        names = [h.name for h in inventory]
        if value not in names:
            problems.add(f"{source}.k3s_move_from", f"{value!r} is not a host of the inventory",
                         f"the old server, kept in the inventory (out of the k3s groups) until the move is done: "
                         f"one of {', '.join(n for n in names if n not in {h.name for h in nodes}) or 'none'}")
        elif value in {h.name for h in nodes}:
            problems.add(f"{source}.k3s_move_from", f"{value!r} is still a k3s node",
                         f"{value} out of k3s_servers and k3s_agents: this run takes k3s off it")
        elif _lookup(inventory, servers[0], "k3s_cluster_init")[1] is False:
            problems.add(f"{source}.k3s_move_from", "needs k3s_cluster_init (embedded etcd): the move restores an "
                         "etcd snapshot", "k3s_cluster_init = True on the old and the new server")


# Downtime alerts (defaults in deploys.alerts.ALERTS_DEFAULTS)
#


def _check_alerts(inventory: Inventory, problems: _Problems) -> None:
    """The ntfy URL (https unless allowed otherwise), the probe interval and timeout."""
    checks = {
        "alerts_ntfy_url": lambda v: [] if v is None or (isinstance(v, str) and _NTFY_URL_RE.match(v)) else [
            (f"{_show(v)} is not an ntfy topic URL", "https://HOST/TOPIC, e.g. https://ntfy.sh/my-cluster-alerts, "
             "or None for no alerts")],
        "alerts_ntfy_token": lambda v: [],  # a secret: checked with the other secrets
        "alerts_interval": lambda v: _check_int_range(v, 5, 86400, "whole seconds 5-86400"),
        "alerts_timeout": lambda v: _check_int_range(v, 1, 60, "whole seconds 1-60"),
        "alerts_retry": lambda v: _check_int_range(v, 0, 300, "whole seconds 0-300"),
        "alerts_allow_http": _check_bool,
    }
    assert set(checks) == set(ALERTS_DEFAULTS), "every alerts key has a check"
    for key, check in checks.items():
        _check_per_source(inventory, key, check, problems)
    for source, (value, hosts) in _sources(inventory, "alerts_ntfy_url").items():
        if isinstance(value, str) and value.startswith("http://") and _NTFY_URL_RE.match(value) and any(
            _lookup(inventory, host, "alerts_allow_http")[1] is not True for host in hosts
        ):
            problems.add(f"{source}.alerts_ntfy_url", f"{value} is plain http (the token and the alerts would "
                         "travel in clear)", "https://…, or alerts_allow_http = True where that is fine")


_NTFY_URL_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?(/[A-Za-z0-9._~-]+)+$")


# Cluster add-ons (defaults in deploys.cluster.CLUSTER_DEFAULTS)
#

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _pool_network(pool: Any) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None:
    """A MetalLB pool (``192.168.1.240/28`` or ``192.168.1.240-192.168.1.250``) as its first and last address."""
    if not isinstance(pool, str):
        return None
    try:
        if "-" in pool:
            first, last = (ipaddress.IPv4Address(part.strip()) for part in pool.split("-", 1))
            return (first, last) if first <= last else None
        network = ipaddress.IPv4Network(pool, strict=True)
    except ValueError:
        return None
    return network[0], network[-1]


def _check_addons(inventory: Inventory, problems: _Problems, hosts: dict[str, HostConfig]) -> AddonsConfig:
    """Validate the cluster add-on keys: MetalLB pools and their route from the entrance, cert-manager's issuers,
    rook-ceph's devices and replicas."""

    def value(key: str) -> tuple[str, Any]:
        found = _cluster_value(inventory, key, problems, key.replace("_", " "))
        return found if found is not None else ("all", CLUSTER_DEFAULTS[key])

    config = AddonsConfig()
    # MetalLB
    source, pools = value("metallb_pools")
    ranges: list[tuple[int, str, tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]]] = []
    if not isinstance(pools, list | tuple):
        problems.add(f"{source}.metallb_pools", _wrong_type(pools), "a list of LAN address ranges like "
                     "['192.168.1.240/28'] or ['192.168.1.240-192.168.1.250'], or [] for no MetalLB")
    else:
        for index, pool in enumerate(pools):
            span = _pool_network(pool)
            if span is None:
                problems.add(f"{source}.metallb_pools[{index}]", f"{_show(pool)} is not an address range",
                             "an IPv4 subnet like 192.168.1.240/28 or a range like 192.168.1.240-192.168.1.250")
            else:
                ranges.append((index, pool, span))
        config.metallb_pools = [pool for _, pool, _ in ranges]
    advertised = [_lookup(inventory, host, "tailscale_advertise_routes")[1] for host in inventory]
    routes = [ipaddress.IPv4Network(cidr) for found in advertised if isinstance(found, list | tuple)
              for cidr in found if isinstance(cidr, str) and _is_ipv4_network(cidr)]
    entrances = _group_hosts(inventory, ENTRANCE)
    upstreams = {_lookup(inventory, host, "entrance_upstream")[1] for host in entrances}
    addresses = {u for u in upstreams if isinstance(u, str) and _is_ipv4(u)}
    if len(addresses) == 1 and len(upstreams) == 1:
        config.lb_address = next(iter(addresses))
    for address in sorted(addresses):
        ip = ipaddress.IPv4Address(address)
        inside = [(index, pool, span) for index, pool, span in ranges if span[0] <= ip <= span[1]]
        if ranges and not inside:
            problems.add(f"{source}.metallb_pools", f"no pool holds entrance_upstream {address}",
                         "a metallb_pools range that holds the address the entrance targets (MetalLB gives it to "
                         "Traefik), or entrance_upstream = 'nodes'")
        for index, pool, (first, last) in inside:
            if not any(first in net and last in net for net in routes):
                problems.add(
                    f"{source}.metallb_pools[{index}]",
                    f"{pool} has no route to it from the entrance (no tailscale_advertise_routes subnet covers it)",
                    "a subnet that covers the whole pool in tailscale_advertise_routes of a node on that LAN, e.g. "
                    f"{ipaddress.IPv4Network(f'{first}/24', strict=False)}",
                )
    if entrances:
        first_entrance = entrances[0]
        for key in ("entrance_http_port", "entrance_https_port"):
            port = _lookup(inventory, first_entrance, key)[1]
            if isinstance(port, int) and 1 <= port <= 65535:
                setattr(config, key.replace("entrance_", ""), port)
    # cert-manager
    source, email = value("acme_email")
    if email is not None and not (isinstance(email, str) and _EMAIL_RE.match(email)):
        problems.add(f"{source}.acme_email", f"{_show(email)} is not an email address",
                     "the address Let's Encrypt writes to about expiring certificates, or None")
    else:
        config.acme_email = email
    source, issuer = value("acme_issuer")
    if issuer not in ISSUERS:
        problems.add(f"{source}.acme_issuer", f"{_show(issuer)} is not an issuer", " or ".join(map(repr, ISSUERS)))
    else:
        config.acme_issuer = issuer
    source, solver = value("acme_solver")
    if solver not in ("http01", "dns01"):
        problems.add(f"{source}.acme_solver", f"{_show(solver)} is not a solver",
                     "'http01' (through the entrance and Traefik) or 'dns01' (a DNS provider's API)")
    else:
        config.acme_solver = solver
    provider_source, provider = value("dns01_provider")
    if provider is not None and provider not in DNS01_PROVIDERS:
        problems.add(f"{provider_source}.dns01_provider", f"{_show(provider)} is not a supported DNS provider",
                     f"one of {', '.join(DNS01_PROVIDERS)}, or None")
    elif solver == "dns01":
        if provider is None:
            problems.add(f"{provider_source}.dns01_provider", "is missing while acme_solver is 'dns01'",
                         f"one of {', '.join(DNS01_PROVIDERS)}")
        servers = _group_hosts(inventory, K3S_SERVERS)
        if servers and _lookup(inventory, servers[0], "dns01_token")[1] in (None, _MISSING):
            problems.add("all.dns01_token", "is missing while acme_solver is 'dns01'",
                         f"{_REFERENCE_SHAPES}: the DNS provider's API token")
        config.dns01_provider = provider
    config.backups = _check_app_backups(inventory, problems, value)
    source, toolbox = value("rook_ceph_toolbox")
    for problem, expected in _check_bool(toolbox):
        problems.add(f"{source}.rook_ceph_toolbox", problem, expected)
    config.ceph_toolbox = toolbox is not False
    # rook-ceph
    source, rook = value("rook_ceph")
    replicas_source, replicas = value("rook_ceph_replicas")
    nodes = [host for host in hosts.values() if host.groups & {K3S_SERVERS, K3S_AGENTS}]
    devices = [(host.hostname, host.external_ssd) for host in nodes if host.external_ssd]
    if rook not in (None, True, False):
        problems.add(f"{source}.rook_ceph", f"{_show(rook)} is not allowed",
                     "None (on when every k3s node has an external_ssd), True or False")
        return config
    if replicas is not None and _check_int_range(replicas, 1, 7, ""):
        problems.add(f"{replicas_source}.rook_ceph_replicas", f"{_show(replicas)} is not a replica count",
                     "1-7, or None for one per k3s node, at most 3")
        return config
    config.rook_ceph = bool(nodes) and len(devices) == len(nodes) if rook is None else rook
    if config.rook_ceph:
        wanted = replicas if replicas is not None else min(3, len(nodes))
        if len(devices) < wanted:
            where = f"{replicas_source}.rook_ceph_replicas" if replicas is not None else f"{source}.rook_ceph"
            without = ", ".join(host.name for host in nodes if not host.external_ssd) or "none"
            problems.add(
                where,
                f"{wanted} replicas but only {len(devices)} k3s node{'' if len(devices) == 1 else 's'} with an "
                f"external_ssd (nodes without one: {without})",
                f"external_ssd on at least {wanted} k3s nodes, a smaller rook_ceph_replicas, or rook_ceph = False",
            )
        config.ceph_replicas = wanted
        config.ceph_nodes = devices
    return config


def _check_app_backups(inventory: Inventory, problems: _Problems, value: Callable[[str], tuple[str, Any]]
                       ) -> AppBackups | None:
    """The apps' backup keys, and the secrets a backup needs on the first k3s server."""
    before = len(problems.lines)
    s3_source, s3 = value("app_backup_s3")
    for problem, expected in _check_s3(s3, "backups", ("insecure",)):
        problems.add(f"{s3_source}.app_backup_s3", problem, expected)
    if isinstance(s3, dict) and "insecure" in s3 and not isinstance(s3["insecure"], bool):
        problems.add(f"{s3_source}.app_backup_s3", f"insecure {_show(s3['insecure'])} is not True or False",
                     "True (plain http, e.g. a store on the tailnet) or False (https)")
    source, schedule = value("app_backup_schedule")
    wrong = cron_problem(schedule)
    if wrong:
        problems.add(f"{source}.app_backup_schedule", f"{_show(schedule)}: {wrong}", _CRON_EXPECTED)
    source, keep = value("app_backup_keep")
    expected = ('snapshots to keep per period, like {"daily": 7, "weekly": 4, "monthly": 6} '
                f'({", ".join(BACKUP_KEEP)})')
    if not isinstance(keep, dict):
        problems.add(f"{source}.app_backup_keep", _wrong_type(keep), expected)
    else:
        for period, count in keep.items():
            if period not in BACKUP_KEEP:
                problems.add(f"{source}.app_backup_keep.{period}", "is not a period",
                             f"one of {', '.join(BACKUP_KEEP)}")
            for problem, wanted in _check_int_range(count, 1, 10000, "a number of snapshots, 1-10000"):
                problems.add(f"{source}.app_backup_keep.{period}", problem, wanted)
        if not keep:
            problems.add(f"{source}.app_backup_keep", "keeps nothing (every snapshot would be removed)", expected)
    if s3 is None:
        return None
    servers = _group_hosts(inventory, K3S_SERVERS)
    for key, what in (("app_backup_password", "the password that encrypts the apps' restic repositories"),
                      ("s3_access_key", "the S3 bucket's key"), ("s3_secret_key", "the S3 bucket's key")):
        if servers and _lookup(inventory, servers[0], key)[1] in (None, _MISSING):
            problems.add(f"all.{key}", "is missing while app_backup_s3 is set", f"{_REFERENCE_SHAPES}: {what}")
    if len(problems.lines) > before:
        return None
    return AppBackups(s3=dict(s3), schedule=schedule, keep=dict(keep))


def _is_ipv4_network(value: str) -> bool:
    try:
        ipaddress.IPv4Network(value, strict=True)
        return True
    except ValueError:
        return False


def validate_inventory(
    inventory: Inventory, require_secrets: bool = True, cwd: str | None = None
) -> ClusterConfig:
    """
    Read and validate all of an inventory's data; raise ``ConfigError`` listing every problem.

    + inventory: a ``pyinfra.api.Inventory`` (see ``load_inventory``)
    + require_secrets: also check that secrets' env vars and files exist (deploy time); else shape only
    + cwd: base directory for relative secret file paths (default: the current directory)
    """
    problems = _Problems()
    _check_groups(inventory, problems)

    # Cluster-wide values
    domain: str | None = None
    found = _cluster_value(inventory, "domain", problems, "domain")
    if found is None:
        problems.add("all.domain", "is missing", f"{_DOMAIN_EXPECTED}, in group_data/all.py")
    else:
        source, value = found
        check = _check_domain(value)
        for problem, expected in check:
            problems.add(f"{source}.domain", problem, expected)
        domain = value if not check else None

    versions = dict(VERSIONS)
    found = _cluster_value(inventory, "versions", problems, "set of versions")
    if found is not None:
        versions = _check_versions(found[1], found[0], problems)

    apps: list[App] = []
    found = _cluster_value(inventory, "apps", problems, "app catalog")
    if found is not None:
        apps = _check_apps(found[1], found[0], domain, problems, require_secrets, cwd)

    # Settings a group or host may override: each distinct value is checked once, where it is set.
    for source, (value, _hosts) in _sources(inventory, "base_packages").items():
        packages = "Debian package names like curl"
        _check_str_list(
            value, f"{source}.base_packages", packages, _PACKAGE_RE.match, "package name", problems
        )
    for source, (value, _hosts) in _sources(inventory, "ntp_servers").items():
        servers = "NTP server host names or IP addresses"
        if isinstance(value, list | tuple) and not value:
            problems.add(f"{source}.ntp_servers", "is empty", f"at least one of {servers}")
        _check_str_list(value, f"{source}.ntp_servers", servers, _is_host_or_ip, "host", problems)
    _check_per_source(inventory, "ssh_permit_root_login", _check_ssh_permit_root_login, problems)
    _check_per_source(inventory, "connection_lost_after",
                      lambda v: _check_int_range(v, 10, 3600, "whole seconds 10-3600"), problems)
    _check_per_source(inventory, "hardware", lambda v: [] if v is None else _check_slug(v), problems)
    _check_per_source(inventory, "external_ssd", lambda v: [] if v is None else _check_device(v), problems)
    _check_node_baseline(inventory, problems)
    for key in sorted(SECRET_KEYS):
        _check_per_source(inventory, key, lambda v: _check_secret(v, require_secrets, cwd), problems)

    # Hosts
    hosts: dict[str, HostConfig] = {}
    _check_per_source(inventory, "public_ipv4", _check_public_ipv4, problems)
    hostname_sources = _check_per_source(
        inventory, "hostname", lambda v: _check_label(v, "host name", "t420 or node-1"), problems
    )
    seen: dict[str, str] = {}
    for host in inventory:
        source, value = _lookup(inventory, host, "hostname")
        if value is _MISSING:
            source, value = host.name, default_hostname(host.name)
            if not is_label(value):
                problems.add(
                    f"{host.name}.hostname",
                    f"the inventory name {value!r} is not a valid host name",
                    _LABEL_EXPECTED.format(example="t420") + "; or set hostname in the host's data",
                )
        elif not hostname_sources[source][1]:
            value = None
        if isinstance(value, str) and is_label(value):
            if value in seen:
                problems.add(
                    f"{source}.hostname",
                    f"{value!r} is also the hostname of {seen[value]}",
                    "a unique hostname per host",
                )
            seen.setdefault(value, host.name)
        hosts[host.name] = _host_config(inventory, host, value if isinstance(value, str) else host.name)

    tailnet = _check_tailnet(inventory, problems)
    _check_k3s(inventory, problems, require_secrets, cwd)
    _check_alerts(inventory, problems)
    addons = _check_addons(inventory, problems, hosts)

    if problems.lines:
        raise ConfigError(problems.lines)

    assert domain is not None
    defaults = HostConfig(name="all", groups=frozenset(), hostname="all")
    data = inventory.get_data() or {}
    return ClusterConfig(
        domain=domain,
        apps=apps,
        hosts=hosts,
        versions=versions,
        base_packages=list(data.get("base_packages", defaults.base_packages)),
        ntp_servers=list(data.get("ntp_servers", defaults.ntp_servers)),
        ssh_permit_root_login=data.get("ssh_permit_root_login", defaults.ssh_permit_root_login),
        tailnet=tailnet,
        addons=addons,
    )


def _host_config(inventory: Inventory, host: Host, hostname: str) -> HostConfig:
    def get(key: str, default: Any) -> Any:
        value = _lookup(inventory, host, key)[1]
        return default if value is _MISSING else value

    config = HostConfig(name=host.name, groups=frozenset(host.groups), hostname=hostname)
    config.hardware = get("hardware", None)
    config.external_ssd = get("external_ssd", None)
    public = get("public_ipv4", None) or get("ssh_hostname", None)
    config.public_ipv4 = public if isinstance(public, str) and _is_ipv4(public) else None
    config.base_packages = list(get("base_packages", config.base_packages) or [])
    config.ntp_servers = list(get("ntp_servers", config.ntp_servers) or [])
    config.ssh_permit_root_login = get("ssh_permit_root_login", config.ssh_permit_root_login)
    config.secrets = {key: value for key in sorted(SECRET_KEYS) if (value := get(key, None)) is not None}
    return config


_STATE_ATTR = "portable_k3s_config"


def validate_state(state: Any) -> ClusterConfig:
    """
    Validate ``state.inventory`` once per state (secrets must be there); raise the same ``ConfigError``
    on every call if it is bad. Runs no fact and no command: call it first in a deploy file.

    .. code:: python

        from pyinfra import state
        from portable_k3s.config import validate_state

        validate_state(state)
    """
    inventory = state.inventory
    cached = getattr(state, _STATE_ATTR, None)
    if cached is None or cached[0] is not inventory:
        cwd = getattr(state, "cwd", None) or os.getcwd()
        result: ClusterConfig | ConfigError
        try:
            result = validate_inventory(inventory, require_secrets=True, cwd=cwd)
        except ConfigError as error:
            result = error
        cached = (inventory, result)
        setattr(state, _STATE_ATTR, cached)
    result = cached[1]
    if isinstance(result, ConfigError):
        raise ConfigError(result.problems)
    return result


def load_inventory(path: str, cwd: str | None = None) -> Inventory:
    """
    Load a pyinfra inventory file with its group_data, offline: nothing connects or resolves names.

    + path: the inventory file, e.g. ``inventories/home.py``
    + cwd: the project directory whose ``group_data/`` applies (default: the current directory)
    """
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    if not os.path.isfile(path):
        raise ConfigError([f"{path}: no such inventory file (expected a pyinfra inventory .py file)"])
    previous = ctx_state.get()
    with ctx_state.use(State()):
        try:
            return make_inventory(path, cwd=cwd or os.getcwd())
        finally:
            ctx_state.set(previous)  # also when the inventory's own code raises
