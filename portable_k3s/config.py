"""The configuration model: the inventory's data, checked against the settings registry and the rules between keys.

Each key is declared once in ``portable_k3s.settings`` (its type, default, scope and documentation); this module
checks every value against it, adds the rules that span keys and hosts (groups, the app catalog, routes, address
plans, HA, a server move), and builds the validated ``ClusterConfig`` the deploys take. All data (group_data
files, the inventory file's host and group data, ``--data`` overrides) is read into one ``ClusterConfig`` before
any operation is planned. Every problem is collected and reported at once,
one per line, as ``<host or group>.<key path>: <problem> (expected …)``:

.. code:: text

    all.apps[3].hostname: 'Blog..example.org' is not a valid domain name (expected a lower-case DNS ...)
    master.external_ssd: 'sdb' is not a block device path (expected /dev/NAME, e.g. /dev/sdb)
    headscale: 2 hosts (cloud, vps) (expected exactly one headscale host)

Check an inventory offline with ``python -m portable_k3s check inventories/home.py``; a deploy calls
``validate_state(state)`` first, so a bad inventory stops the run before any host is touched.

A key that is not a setting but looks meant to be one (``tailscale_acept_dns``) is reported with the closest
setting; pyinfra's own keys (``ssh_*``, ``_sudo`` …) and clearly foreign keys are left alone.

Secrets (``SECRET_KEYS``) are never literal strings in the data: give ``{"env": "VAR"}``,
``{"file": "path"}`` or a ``pyinfra.api.HiddenValue``, and read them with ``resolve_secret``.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pyinfra.api import Inventory
from pyinfra.api.host import Host

from portable_k3s.deploys.base import default_hostname
from portable_k3s.deploys.headscale import BUILTIN_TAGS, host_tags, tailnet_policy
from portable_k3s.settings import SECRET_KEYS, SETTINGS, unknown_key_problem
from portable_k3s.settings.addons import DNS01_PROVIDERS, INTERNAL_ISSUER, pool_span
from portable_k3s.settings.apps import RESERVED_PORTS, App, check_apps
from portable_k3s.settings.base import (
    DEBIAN_CODENAMES,
    DOMAIN_EXPECTED,
    LABEL_EXPECTED,
    normalise_version,
)
from portable_k3s.settings.core import (
    REFERENCE_SHAPES,
    ConfigError,
    Problems,
    Setting,
    check_secret,
    is_domain,
    is_ipv4,
    is_label,
    resolve_secret,
    show,
)
from portable_k3s.settings.k3s import K3S_DISABLE, K3S_TAILNET_MODES, TAINT_EFFECTS
from portable_k3s.versions import HEADSCALE_CLIENTS, VERSIONS

__all__ = [
    "ENTRANCE", "EXIT_NODES", "HEADSCALE", "K3S_AGENTS", "K3S_SERVERS", "KNOWN_GROUPS", "SECRET_KEYS",
    "AddonsConfig", "App", "AppBackups", "ClusterConfig", "ConfigError", "HostConfig", "TailnetConfig",
    "DEBIAN_CODENAMES", "K3S_DISABLE", "K3S_TAILNET_MODES", "TAINT_EFFECTS", "is_domain", "is_label",
    "check_inventory_file", "load_inventory", "normalise_version", "resolve_secret", "validate_inventory",
    "validate_state",
]

# Groups the library gives a meaning to; any other group (the inventory file's own, users' groups) is fine.
HEADSCALE = "headscale"
ENTRANCE = "entrance"
K3S_SERVERS = "k3s_servers"
K3S_AGENTS = "k3s_agents"
EXIT_NODES = "exit_nodes"
KNOWN_GROUPS = frozenset({HEADSCALE, ENTRANCE, K3S_SERVERS, K3S_AGENTS, EXIT_NODES})
# Hosts in any of these groups join the tailnet.
TAILNET_GROUPS = KNOWN_GROUPS

# Values used when no data sets the key (the registry's defaults).
DEFAULT_BASE_PACKAGES: tuple[str, ...] = tuple(SETTINGS["base_packages"].default)
DEFAULT_NTP_SERVERS: tuple[str, ...] = tuple(SETTINGS["ntp_servers"].default)
DEFAULT_SSH_PERMIT_ROOT_LOGIN: str = SETTINGS["ssh_permit_root_login"].default
DEFAULT_POD_CIDR = "10.42.0.0/16"  # k3s's cluster-cidr
DEFAULT_SERVICE_CIDR = "10.43.0.0/16"  # k3s's service-cidr
TAILNET_RANGE = ipaddress.IPv4Network("100.64.0.0/10")  # the tailnet's addresses (CGNAT space)

# Where a value set with ``pyinfra --data key=value`` is said to come from.
OVERRIDE_SOURCE = "--data"

_DOMAIN_EXPECTED = DOMAIN_EXPECTED
_LABEL_EXPECTED = LABEL_EXPECTED
_REFERENCE_SHAPES = REFERENCE_SHAPES
_show = show
_is_ipv4 = is_ipv4
_check_secret = check_secret


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


_Problems = Problems


# Where data comes from
#

_MISSING = object()


def _layers(inventory: Inventory, host: Host) -> list[tuple[str, Mapping[str, Any]]]:
    """The data layers ``host.data`` reads, first match wins: ``--data``, the host, its groups, ``all``."""
    layers: list[tuple[str, Mapping[str, Any]]] = [
        (OVERRIDE_SOURCE, inventory.get_override_data() or {}),
        (host.name, inventory.get_host_data(host.name) or {}),
    ]
    # Later groups win in pyinfra's group data merge.
    layers += [(group, inventory.get_group_data(group) or {}) for group in reversed(list(host.groups))]
    layers.append(("all", inventory.get_data() or {}))
    return layers


def _lookup(inventory: Inventory, host: Host, key: str) -> tuple[str, Any]:
    """
    Find ``key`` the way ``host.data`` does; returns ``(source, value)`` where source is the host, group,
    ``all`` or ``--data`` that sets it, or ``("", _MISSING)``.
    """
    for source, data in _layers(inventory, host):
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


class _Values:
    """
    Every setting checked against the registry, each distinct value once where it is set: ``all``-scope ones
    as one value for the inventory, the others per source. Rules read values through it.
    """

    def __init__(self, inventory: Inventory, problems: _Problems, require_secrets: bool, cwd: str | None):
        self.inventory = inventory
        self.problems = problems
        self.bad: set[tuple[str, str]] = set()  # (source, key) whose value failed its check
        for setting in SETTINGS.values():
            if setting.scope == "all":
                found = _cluster_value(inventory, setting.name, problems, setting.name.replace("_", " "))
                places = {found[0]: found[1]} if found else {}
            else:
                places = {source: value for source, (value, _hosts) in _sources(inventory, setting.name).items()}
            for source, value in places.items():
                check = (_check_secret(value, require_secrets, cwd) if setting.secret and value is not None
                         else setting.type.check(value))
                if not problems.add_check(f"{source}.{setting.name}", check):
                    self.bad.add((source, setting.name))
            if setting.required and not places:
                problems.add(f"all.{setting.name}", "is missing", _required_expected(setting))

    def cluster(self, key: str) -> tuple[str, Any]:
        """``(source, value)`` of an ``all``-scope key, its default when nothing sets it."""
        found = _cluster_value(self.inventory, key, _Problems(), key)
        return found if found is not None else ("all", SETTINGS[key].default if key in SETTINGS else None)

    def ok(self, source: str, key: str) -> bool:
        return (source, key) not in self.bad

    def of(self, host: Host, key: str) -> tuple[str, Any]:
        """``(source, value)`` of a key as ``host`` sees it, its default when nothing sets it."""
        source, value = _lookup(self.inventory, host, key)
        if value is _MISSING:
            return "", SETTINGS[key].default if key in SETTINGS else None
        return source, value

    def valid(self, host: Host, key: str) -> Any:
        """A key's value as ``host`` sees it when it passed its check, else None."""
        source, value = self.of(host, key)
        return value if self.ok(source, key) else None


def _required_expected(setting: Setting) -> str:
    examples = {
        "domain": f"{_DOMAIN_EXPECTED}, in group_data/all.py",
        "headscale_url": "the URL nodes reach headscale at, like https://headscale.DOMAIN",
        "tailnet_domain": "the MagicDNS base domain, like tailnet.example.org",
    }
    return examples.get(setting.name, f"{setting.doc}, in group_data/all.py")


def _check_unknown_keys(inventory: Inventory, problems: _Problems) -> None:
    """Keys that look meant for this library but are not settings: typos get the closest setting's name."""
    layers: list[tuple[str, Mapping[str, Any]]] = [
        (OVERRIDE_SOURCE, inventory.get_override_data() or {}), ("all", inventory.get_data() or {})]
    for host in inventory:
        layers.append((host.name, inventory.get_host_data(host.name) or {}))
        layers += [(group, inventory.get_group_data(group) or {}) for group in host.groups]
    seen: set[tuple[str, str]] = set()
    for source, data in layers:
        for key in data:
            if not isinstance(key, str) or (source, key) in seen:
                continue
            seen.add((source, key))
            if found := unknown_key_problem(key):
                problems.add(f"{source}.{key}", *found)


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


# Tailnet (headscale + tailscale): the rules between keys
#


def _headscale_client_range(headscale: str) -> tuple[str, str] | None:
    return HEADSCALE_CLIENTS.get(".".join(headscale.split(".")[:2]))


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _check_tailnet(inventory: Inventory, values: _Values, problems: _Problems) -> TailnetConfig | None:
    """The rules between the tailnet keys (each key's own check is the registry's)."""
    before = len(problems.lines)
    source, url = values.cluster("headscale_url")
    _, allow_http = values.cluster("headscale_allow_http")
    url_host = ""
    if isinstance(url, str) and values.ok(source, "headscale_url"):
        scheme, _, rest = url.partition("://")
        url_host = rest.split("/", 1)[0].rsplit(":", 1)[0] if not rest.startswith("[") else ""
        if scheme != "https" and allow_http is not True:
            problems.add(f"{source}.headscale_url", f"{url!r} is not https",
                         "https:// (plain http only in the local lab, with headscale_allow_http = True)")
    source, base = values.cluster("tailnet_domain")
    if isinstance(base, str) and url_host and (url_host == base or url_host.endswith("." + base)):
        problems.add(f"{source}.tailnet_domain", f"{base!r} contains headscale's own name {url_host!r}",
                     "a MagicDNS domain that differs from the headscale_url domain, like tailnet.example.org")
    _, tags = values.cluster("tailnet_tags")
    known_tags = set(BUILTIN_TAGS) | set(tags if isinstance(tags, list) else [])
    _check_client_version(values, problems)

    for source, (value, _hosts) in _sources(inventory, "tailscale_tags").items():
        if isinstance(value, list) and values.ok(source, "tailscale_tags"):
            unknown = [tag for tag in value if tag not in known_tags]
            if unknown:
                problems.add(f"{source}.tailscale_tags", f"unknown tags {unknown}",
                             f"tags defined by the deploy or in tailnet_tags: {sorted(known_tags)}")
    for host in inventory:
        mtu_source, mtu = _lookup(inventory, host, "tailscale_mtu")
        env_source, env = _lookup(inventory, host, "tailscaled_env")
        if mtu not in (None, _MISSING) and isinstance(env, dict) and "TS_DEBUG_MTU" in env:
            problems.add(f"{env_source}.tailscaled_env", f"sets TS_DEBUG_MTU while {mtu_source}.tailscale_mtu is set",
                         "the MTU in tailscale_mtu only")
    routes: dict[str, set[str]] = {}
    for host in inventory:
        host_routes = values.valid(host, "tailscale_advertise_routes")
        _, extra = _lookup(inventory, host, "tailscale_tags")
        for cidr in host_routes or []:
            routes.setdefault(cidr, set()).update(host_tags(set(host.groups), extra if isinstance(extra, list) else []))
    _check_entrance_upstream(inventory, values, routes, problems)
    _check_entrance_ports(inventory, values, problems)
    if len(problems.lines) > before or not isinstance(url, str) or not isinstance(base, str):
        return None
    _, admins = values.cluster("tailnet_admins")
    _, grants = values.cluster("tailnet_extra_grants")
    _, ingress = values.cluster("ingress_address")
    return TailnetConfig(
        headscale_url=url, domain=base, admins=list(admins), tags=list(tags), extra_grants=list(grants),
        ingress_address=ingress, routes={cidr: sorted(t) for cidr, t in routes.items()},
        pod_cidrs=_pod_cidrs(inventory) if _native_k3s_hosts(inventory) else [],
    )


def _check_client_version(values: _Values, problems: _Problems) -> None:
    """The pinned tailscale client must be one the pinned headscale accepts (``versions.HEADSCALE_CLIENTS``)."""
    source, pins = values.cluster("versions")
    if not isinstance(pins, dict) or not values.ok(source, "versions"):
        return
    headscale = normalise_version("headscale", str(pins.get("headscale", VERSIONS["headscale"])))
    client = normalise_version("tailscale", str(pins.get("tailscale", VERSIONS["tailscale"])))
    accepted = _headscale_client_range(headscale)
    if accepted is None:
        known = ", ".join(f"{minor}.x" for minor in HEADSCALE_CLIENTS)
        if "headscale" in pins:
            problems.add(f"{source}.versions.headscale", f"{headscale!r} is a headscale release this library has not "
                         "been checked with", f"a headscale release of {known}")
        return
    oldest, newest = accepted
    if not _minor(oldest) <= _minor(client) <= _minor(newest):
        problems.add(f"{source}.versions.tailscale", f"{client!r} is not a client headscale {headscale} accepts",
                     f"a tailscale version from {oldest} to {newest}")


def _check_entrance_upstream(inventory: Inventory, values: _Values, routes: dict[str, set[str]],
                             problems: _Problems) -> None:
    """``entrance_upstream``: an ingress IPv4 must lie inside a subnet some host advertises, on an entrance that
    accepts routes (MetalLB answers ARP on the LAN only; the tailnet reaches it through that route)."""
    for source, (value, hosts) in _sources(inventory, "entrance_upstream").items():
        if value == "nodes" or not values.ok(source, "entrance_upstream"):
            continue
        address = ipaddress.IPv4Address(value)
        if not any(address in ipaddress.ip_network(cidr) for cidr in routes):
            problems.add(f"{source}.entrance_upstream", f"{value} is in no subnet a host advertises",
                         "a tailscale_advertise_routes entry on a LAN node that covers it, e.g. the MetalLB pool")
        for host in hosts:
            if ENTRANCE in host.groups and _lookup(inventory, host, "tailscale_accept_routes")[1] is not True:
                problems.add(f"{host.name}.tailscale_accept_routes", "is not True, so the entrance cannot reach "
                             f"entrance_upstream {value} through its subnet route", "True on entrance hosts")


def _check_entrance_ports(inventory: Inventory, values: _Values, problems: _Problems) -> None:
    """An entrance's two ports differ, and an entrance that is also a k3s node keeps the public ports to nginx."""
    for host in _group_hosts(inventory, ENTRANCE):
        http_source, http = values.of(host, "entrance_http_port")
        https_source, https = values.of(host, "entrance_https_port")
        if http == https and is_int_port(http):
            problems.add(f"{https_source or host.name}.entrance_https_port", f"{https} is also entrance_http_port",
                         "two different ports for TLS and plain http")
        for app_port in _tcp_ports(inventory):
            if app_port in (http, https) and app_port not in RESERVED_PORTS:
                problems.add(f"{http_source or https_source or host.name}.entrance_https_port",
                             f"{app_port} is also an app's tcp_port", "entrance ports no app's tcp_port uses")
        if set(host.groups) & {K3S_SERVERS, K3S_AGENTS}:
            problems.add(f"{host.name}", f"is in {ENTRANCE} and in "
                         f"{K3S_SERVERS if K3S_SERVERS in host.groups else K3S_AGENTS}: Traefik's host ports 80 and "
                         "443 on a k3s node would take the public traffic before nginx's SNI whitelist, and private "
                         "apps would answer the internet", "the entrance on a host that is not a k3s node, like a "
                         "small cloud VM")


def is_int_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _tcp_ports(inventory: Inventory) -> list[int]:
    apps = (inventory.get_data() or {}).get("apps")
    if not isinstance(apps, list):
        return []
    return [app["tcp_port"] for app in apps if isinstance(app, dict) and is_int_port(app.get("tcp_port"))]


def _check_headscale_backup(inventory: Inventory, values: _Values, problems: _Problems) -> None:
    """A backup to restore is one (checked here, before any host is touched); an S3 copy has its keys."""
    from portable_k3s.operations.headscale import backup_problems

    for source, (value, _hosts) in _sources(inventory, "headscale_restore").items():
        if isinstance(value, str) and values.ok(source, "headscale_restore"):
            for problem in backup_problems(value):
                problems.add(f"{source}.headscale_restore", problem, "None, or the path of a backup archive made by "
                             "the headscale deploy (headscale-….tar.gz)")
    for host in _group_hosts(inventory, HEADSCALE):
        if _lookup(inventory, host, "headscale_backup_s3")[1] not in (None, _MISSING):
            for key in ("s3_access_key", "s3_secret_key"):
                if _lookup(inventory, host, key)[1] in (None, _MISSING):
                    problems.add(f"{host.name}.{key}", "is missing while headscale_backup_s3 is set",
                                 f"{_REFERENCE_SHAPES}, for the S3 bucket's key")


# k3s: the rules between keys and hosts
#


def _native_k3s_hosts(inventory: Inventory) -> list[Host]:
    """k3s nodes in the "native" tailnet mode (k3s's own tailscale integration)."""
    nodes = _group_hosts(inventory, K3S_SERVERS) + _group_hosts(inventory, K3S_AGENTS)
    return [host for host in dict.fromkeys(nodes) if _lookup(inventory, host, "k3s_tailnet_mode")[1] == "native"]


def _cluster_cidrs(inventory: Inventory, flag: str, default: str) -> list[str]:
    """The cluster's IPv4 networks of ``flag`` (``cluster-cidr``, ``service-cidr``) from the first server's
    k3s_extra_config, else k3s's default."""
    servers = _group_hosts(inventory, K3S_SERVERS)
    extra = _lookup(inventory, servers[0], "k3s_extra_config")[1] if servers else None
    value = extra.get(flag, default) if isinstance(extra, dict) else default
    cidrs = value if isinstance(value, list) else str(value).split(",")
    return [cidr.strip() for cidr in cidrs if "." in str(cidr)]


def _pod_cidrs(inventory: Inventory) -> list[str]:
    """The cluster's IPv4 pod networks: ``cluster-cidr`` of the first server's k3s_extra_config, else k3s's."""
    return _cluster_cidrs(inventory, "cluster-cidr", DEFAULT_POD_CIDR)


def _check_native_mode(inventory: Inventory, nodes: list[Host], problems: _Problems) -> None:
    """The tailnet mode is one for the whole cluster (flannel's backend follows it); a "native" node leaves its
    routes to k3s (its flannel runs ``tailscale set --advertise-routes=<pod subnet>``) and uses tailscale0."""
    modes = {host.name: _lookup(inventory, host, "k3s_tailnet_mode")[1] for host in nodes}
    default = SETTINGS["k3s_tailnet_mode"].default
    modes = {name: default if mode is _MISSING else mode for name, mode in modes.items()}
    if len(set(map(str, modes.values()))) > 1:
        shown = ", ".join(f"{name}={mode}" for name, mode in modes.items())
        problems.add(f"{K3S_SERVERS}.k3s_tailnet_mode", f"differs between k3s nodes: {shown}",
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


def _check_k3s(inventory: Inventory, problems: _Problems) -> None:
    """What HA with embedded etcd, S3 snapshots, the tailnet mode, an uninstall and a server move need."""
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
                f"{len(servers)} servers with embedded etcd, not all on one LAN: {shown}",
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


# Downtime alerts
#


def _check_alerts(inventory: Inventory, values: _Values, problems: _Problems) -> None:
    """A plain http ntfy URL only where allowed (the token and the alerts would travel in clear)."""
    for source, (value, hosts) in _sources(inventory, "alerts_ntfy_url").items():
        if isinstance(value, str) and value.startswith("http://") and values.ok(source, "alerts_ntfy_url") and any(
            _lookup(inventory, host, "alerts_allow_http")[1] is not True for host in hosts
        ):
            problems.add(f"{source}.alerts_ntfy_url", f"{value} is plain http: the token and the alerts would "
                         "travel in clear", "https://…, or alerts_allow_http = True where that is fine")


# Cluster add-ons and the address plan
#


def _span_network(span: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]) -> list[ipaddress.IPv4Network]:
    return list(ipaddress.summarize_address_range(*span))


def _overlaps(a_span: list[ipaddress.IPv4Network], b_span: list[ipaddress.IPv4Network]) -> bool:
    return any(x.overlaps(y) for x in a_span for y in b_span)


def _check_address_plan(inventory: Inventory, source: str, ranges: list[tuple[int, str, Any]],
                        problems: _Problems) -> None:
    """MetalLB pools, the cluster's pod and service networks, the tailnet and the LANs the nodes advertise must not
    overlap (a pool inside the LAN is the point; a pool inside the tailnet or the pod network is not)."""
    cluster: list[tuple[str, str, list[ipaddress.IPv4Network]]] = []
    for flag, default in (("cluster-cidr", DEFAULT_POD_CIDR), ("service-cidr", DEFAULT_SERVICE_CIDR)):
        for cidr in _cluster_cidrs(inventory, flag, default):
            try:
                cluster.append((flag, cidr, [ipaddress.IPv4Network(cidr, strict=False)]))
            except ValueError:
                servers = _group_hosts(inventory, K3S_SERVERS)
                where = _lookup(inventory, servers[0], "k3s_extra_config")[0] if servers else "all"
                problems.add(f"{where}.k3s_extra_config.{flag}", f"{_show(cidr)} is not an IPv4 network",
                             "a network like 10.42.0.0/16")
    tailnet = ("the tailnet", str(TAILNET_RANGE), [TAILNET_RANGE])
    for index, pool, span in ranges:
        nets = _span_network(span)
        for other_index, other, other_span in ranges:
            if other_index < index and _overlaps(nets, _span_network(other_span)):
                problems.add(f"{source}.metallb_pools[{index}]", f"{pool} overlaps metallb_pools[{other_index}] "
                             f"{other}", "pools that share no address")
        for what, cidr, networks in [*cluster, tailnet]:
            if _overlaps(nets, networks):
                problems.add(f"{source}.metallb_pools[{index}]", f"{pool} overlaps {what} {cidr}",
                             "LAN addresses outside the tailnet (100.64.0.0/10) and the cluster's pod and service "
                             "networks")
    lans: dict[str, str] = {}
    for host in inventory:
        route_source, routes = _lookup(inventory, host, "tailscale_advertise_routes")
        for cidr in routes if isinstance(routes, list) else []:
            if isinstance(cidr, str) and _is_ipv4_network(cidr):
                lans.setdefault(cidr, route_source)
    for flag, cidr, networks in cluster:
        if _overlaps(networks, [TAILNET_RANGE]):
            problems.add(f"all.k3s_extra_config.{flag}", f"{cidr} overlaps the tailnet {TAILNET_RANGE}",
                         "a private network outside 100.64.0.0/10, like k3s's default "
                         f"{DEFAULT_POD_CIDR if flag == 'cluster-cidr' else DEFAULT_SERVICE_CIDR}")
        for lan, lan_source in lans.items():
            if _overlaps(networks, [ipaddress.IPv4Network(lan)]):
                problems.add(f"{lan_source}.tailscale_advertise_routes", f"{lan} overlaps the cluster's {flag} "
                             f"{cidr}", f"a LAN outside the cluster's networks, or another {flag} in "
                             "k3s_extra_config")
    for lan, lan_source in lans.items():
        if _overlaps([ipaddress.IPv4Network(lan)], [TAILNET_RANGE]):
            problems.add(f"{lan_source}.tailscale_advertise_routes", f"{lan} overlaps the tailnet {TAILNET_RANGE}",
                         "LAN subnets outside 100.64.0.0/10")


def _check_addons(inventory: Inventory, values: _Values, problems: _Problems,
                  hosts: dict[str, HostConfig]) -> AddonsConfig:
    """The rules of the cluster add-ons: MetalLB pools and their route from the entrance, the address plan,
    cert-manager's DNS-01 solver, rook-ceph's devices and replicas."""
    config = AddonsConfig()
    # MetalLB
    source, pools = values.cluster("metallb_pools")
    ranges: list[tuple[int, str, tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]]] = []
    if isinstance(pools, list | tuple):
        for index, pool in enumerate(pools):
            span = pool_span(pool)
            if span is not None:
                ranges.append((index, pool, span))
        config.metallb_pools = [pool for _, pool, _ in ranges]
    _check_address_plan(inventory, source, ranges, problems)
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
        for key in ("entrance_http_port", "entrance_https_port"):
            port = values.valid(entrances[0], key)
            if is_int_port(port):
                setattr(config, key.replace("entrance_", ""), port)
    # cert-manager
    for key in ("acme_email", "acme_issuer", "acme_solver", "dns01_provider"):
        key_source, value = values.cluster(key)
        if values.ok(key_source, key):
            setattr(config, key, value)
    provider_source, provider = values.cluster("dns01_provider")
    if config.acme_solver == "dns01":
        if provider is None:
            problems.add(f"{provider_source}.dns01_provider", "is missing while acme_solver is 'dns01'",
                         f"one of {', '.join(DNS01_PROVIDERS)}")
        servers = _group_hosts(inventory, K3S_SERVERS)
        if servers and _lookup(inventory, servers[0], "dns01_token")[1] in (None, _MISSING):
            problems.add("all.dns01_token", "is missing while acme_solver is 'dns01'",
                         f"{_REFERENCE_SHAPES}: the DNS provider's API token")
    config.backups = _check_app_backups(inventory, values, problems)
    toolbox_source, toolbox = values.cluster("rook_ceph_toolbox")
    config.ceph_toolbox = toolbox is not False
    # rook-ceph
    source, rook = values.cluster("rook_ceph")
    replicas_source, replicas = values.cluster("rook_ceph_replicas")
    if not values.ok(source, "rook_ceph") or not values.ok(replicas_source, "rook_ceph_replicas"):
        return config
    nodes = [host for host in hosts.values() if host.groups & {K3S_SERVERS, K3S_AGENTS}]
    devices = [(host.hostname, host.external_ssd) for host in nodes if host.external_ssd]
    config.rook_ceph = bool(nodes) and len(devices) == len(nodes) if rook is None else rook
    if config.rook_ceph:
        wanted = replicas if replicas is not None else min(3, len(nodes))
        if len(devices) < wanted:
            where = f"{replicas_source}.rook_ceph_replicas" if replicas is not None else f"{source}.rook_ceph"
            without = ", ".join(host.name for host in nodes if not host.external_ssd) or "none"
            problems.add(
                where,
                f"{wanted} replicas but only {len(devices)} k3s node{'' if len(devices) == 1 else 's'} with an "
                f"external_ssd; without one: {without}",
                f"external_ssd on at least {wanted} k3s nodes, a smaller rook_ceph_replicas, or rook_ceph = False",
            )
        config.ceph_replicas = wanted
        config.ceph_nodes = devices
    return config


def _check_app_backups(inventory: Inventory, values: _Values, problems: _Problems) -> AppBackups | None:
    """The secrets a backup needs on the first k3s server; the apps' backups when every key is valid."""
    s3_source, s3 = values.cluster("app_backup_s3")
    schedule_source, schedule = values.cluster("app_backup_schedule")
    keep_source, keep = values.cluster("app_backup_keep")
    if s3 is None:
        return None
    before = len(problems.lines)
    servers = _group_hosts(inventory, K3S_SERVERS)
    for key, what in (("app_backup_password", "the password that encrypts the apps' restic repositories"),
                      ("s3_access_key", "the S3 bucket's key"), ("s3_secret_key", "the S3 bucket's key")):
        if servers and _lookup(inventory, servers[0], key)[1] in (None, _MISSING):
            problems.add(f"all.{key}", "is missing while app_backup_s3 is set", f"{_REFERENCE_SHAPES}: {what}")
    valid = all(values.ok(where, key) for where, key in (
        (s3_source, "app_backup_s3"), (schedule_source, "app_backup_schedule"), (keep_source, "app_backup_keep")))
    if len(problems.lines) > before or not valid:
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
    _check_unknown_keys(inventory, problems)
    values = _Values(inventory, problems, require_secrets, cwd)

    source, domain = values.cluster("domain")
    domain = domain if isinstance(domain, str) and values.ok(source, "domain") else None
    source, pins = values.cluster("versions")
    versions = dict(VERSIONS)
    if isinstance(pins, dict) and values.ok(source, "versions"):
        versions.update({component: normalise_version(component, pin) for component, pin in pins.items()})
    apps: list[App] = []
    source, catalog = values.cluster("apps")
    if isinstance(catalog, list | tuple):
        apps = check_apps(catalog, source, domain, problems, require_secrets, cwd)

    # Hosts
    hosts: dict[str, HostConfig] = {}
    seen: dict[str, str] = {}
    for host in inventory:
        source, value = _lookup(inventory, host, "hostname")
        if value is _MISSING or value is None:
            source, value = host.name, default_hostname(host.name)
            if not is_label(value):
                problems.add(
                    f"{host.name}.hostname",
                    f"the inventory name {value!r} is not a valid host name",
                    _LABEL_EXPECTED.format(example="t420") + "; or set hostname in the host's data",
                )
        elif not values.ok(source, "hostname"):
            value = None
        if isinstance(value, str) and is_label(value):
            if value in seen:
                problems.add(
                    f"{source}.hostname",
                    f"{value!r} is also the hostname of {seen[value]}",
                    "a unique hostname per host",
                )
            seen.setdefault(value, host.name)
        hosts[host.name] = _host_config(inventory, values, host, value if isinstance(value, str) else host.name)

    tailnet = _check_tailnet(inventory, values, problems)
    _check_headscale_backup(inventory, values, problems)
    _check_k3s(inventory, problems)
    _check_alerts(inventory, values, problems)
    addons = _check_addons(inventory, values, problems, hosts)

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


def _host_config(inventory: Inventory, values: _Values, host: Host, hostname: str) -> HostConfig:
    def get(key: str, default: Any) -> Any:
        value = _lookup(inventory, host, key)[1]
        return default if value is _MISSING else value

    config = HostConfig(name=host.name, groups=frozenset(host.groups), hostname=hostname)
    config.hardware = values.valid(host, "hardware")
    config.external_ssd = values.valid(host, "external_ssd")
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


_LOADING: ContextVar[bool] = ContextVar("portable_k3s_loading_inventory", default=False)


def check_inventory_file(path: str, cwd: str | None = None) -> None:
    """
    Validate the inventory file ``path`` with its group_data as pyinfra loads it, before pyinfra connects to any
    host: call it at the end of the inventory file. A bad inventory stops the run there, its problems shown as
    an error of that line of the inventory file, even when every host is unreachable. Secrets are checked for
    their shape only (``validate_state`` checks that they are there when deploying). Does nothing while
    ``load_inventory`` loads the file (``python -m portable_k3s check``).

    .. code:: python

        # inventories/home.py, last line
        check_inventory_file(__file__)
    """
    if _LOADING.get():
        return
    caller = sys._getframe(1)
    try:
        validate_inventory(load_inventory(path, cwd=cwd), require_secrets=False, cwd=cwd)
    except ConfigError as error:
        # pyinfra names the innermost frame outside pyinfra: make that the inventory file's own line.
        here = TracebackType(None, caller, caller.f_lasti, caller.f_lineno)
        raise ConfigError(error.problems).with_traceback(here) from None


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
    loading = _LOADING.set(True)
    with ctx_state.use(State()):
        try:
            return make_inventory(path, cwd=cwd or os.getcwd())
        finally:
            ctx_state.set(previous)  # also when the inventory's own code raises
            _LOADING.reset(loading)
