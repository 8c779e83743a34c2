"""k3s over the tailnet: servers (the first one starts the cluster) and agents."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pyinfra import host
from pyinfra.api import Host, deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from ..connection import ssh_tcp_options
from ..facts.files import FileStates
from ..facts.release import InstalledRelease
from ..facts.services import ServiceStates
from ..facts.tailscale import Tailscale
from ..operations import cross_host, files, k3s, prefetch, release, services
from ..render import render
from ..settings import backups as backup_settings
from ..settings import defaults, resolve_secret
from ..settings import k3s as k3s_settings
from ..settings.k3s import REGISTRY_SECRETS, SECRET_FLAGS
from ..versions import VERSIONS
from .base import default_hostname
from .headscale import host_tags

# portable_k3s.settings.k3s and the S3 keys of .backups
K3S_DEFAULTS: dict[str, Any] = defaults(k3s_settings.SETTINGS, backup_settings.SETTINGS)

UNIT_DIR = "/etc/systemd/system"
AIRGAP_DIR = "/var/lib/rancher/k3s/agent/images"  # k3s imports the image tarballs found here when it starts
AIRGAP_IMAGES = f"{AIRGAP_DIR}/k3s-airgap-images.tar.zst"


def _arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, "amd64")


def release_urls(base: str, version: str, machine: str) -> tuple[str, str]:
    """The k3s binary's URL and its checksum list's URL for ``version`` on ``machine`` (``uname -m``)."""
    arch = _arch(machine)
    name = {"amd64": "k3s", "arm64": "k3s-arm64", "arm": "k3s-armhf"}[arch]
    folder = f"{base.rstrip('/')}/{quote(version, safe='')}"
    return f"{folder}/{name}", f"{folder}/sha256sum-{arch}.txt"


def airgap_images(base: str, version: str, machine: str) -> tuple[str, str]:
    """The URL of the release's system images tarball and where k3s imports it from at start (the same path on
    every machine: the deploy plans it before the host's architecture is read)."""
    name = f"k3s-airgap-images-{_arch(machine)}.tar.zst"
    return f"{base.rstrip('/')}/{quote(version, safe='')}/{name}", AIRGAP_IMAGES


def releases(data: Any, version: str) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """``machines`` for ``release.installed``/``k3s.binary``: the binary's, and the airgap images', per machine."""
    binary, images = {}, {}
    for machine in release.MACHINES:
        url, sums = release_urls(data.k3s_download_url, version, machine)
        binary[machine] = {"url": url, **({} if data.k3s_sha256 else {"checksum_url": sums})}
        images[machine] = {"url": airgap_images(data.k3s_download_url, version, machine)[0], "checksum_url": sums}
    return binary, images


def k3s_version(data: Any) -> str:
    """The k3s version a host's data asks for (``versions["k3s"]``, else the pinned one), with its ``v``."""
    version = str((data.get("versions") or {}).get("k3s", VERSIONS["k3s"]))
    return version if version.startswith("v") else f"v{version}"


def node_settings(data: Any, role: str, first: bool) -> dict[str, Any]:
    """config.yaml settings from a node's data (the tailnet ones are added by ``k3s.config``)."""
    settings: dict[str, Any] = {}
    if data.k3s_node_labels:
        settings["node-label"] = list(data.k3s_node_labels)
    if data.k3s_node_taints:
        settings["node-taint"] = list(data.k3s_node_taints)
    if role == "server":
        if data.k3s_disable:
            settings["disable"] = list(data.k3s_disable)
        if first and data.k3s_cluster_init:
            settings["cluster-init"] = True
        if data.k3s_cluster_init and data.k3s_etcd_snapshot_schedule:
            settings["etcd-snapshot-schedule-cron"] = data.k3s_etcd_snapshot_schedule
            settings["etcd-snapshot-retention"] = data.k3s_etcd_snapshot_retention
        s3 = data.k3s_etcd_s3
        if data.k3s_cluster_init and s3:
            settings["etcd-s3"] = True
            settings["etcd-s3-endpoint"] = s3["endpoint"]
            settings["etcd-s3-bucket"] = s3["bucket"]
            for key in ("region", "folder"):
                if s3.get(key):
                    settings[f"etcd-s3-{key}"] = s3[key]
            if s3.get("insecure"):
                settings["etcd-s3-insecure"] = True  # plain http
            settings["etcd-s3-access-key"] = resolve_secret(data.s3_access_key, "s3_access_key").unmask()
            settings["etcd-s3-secret-key"] = resolve_secret(data.s3_secret_key, "s3_secret_key").unmask()
    for key, value in (data.k3s_extra_config or {}).items():
        settings[key] = resolve_secret(value, f"k3s_extra_config.{key}").unmask() if key in SECRET_FLAGS else value
    return settings




def registries(data: Any) -> dict[str, Any] | None:
    """``k3s_registries`` with its credentials read from their references (for ``k3s.registries_text``)."""
    value = data.k3s_registries
    if value is None:
        return None
    configs = {}
    for registry, config in (value.get("configs") or {}).items():
        auth = dict(config.get("auth") or {})
        for key in REGISTRY_SECRETS:
            if key in auth:
                auth[key] = resolve_secret(auth[key], f"k3s_registries.configs[{registry!r}].auth.{key}").unmask()
        configs[registry] = {**config, **({"auth": auth} if auth else {})}
    return {"mirrors": value.get("mirrors") or {}, "configs": configs}


def _k3s_node(role: str, first_server: Host, headscale_host: Host | None) -> None:
    data = host.data
    if data.k3s_state == "absent":
        k3s.uninstalled(name=f"{role.capitalize()}: remove k3s", remove_data=bool(data.k3s_remove_data))
        return
    label = role.capitalize()
    first = host.name == first_server.name
    version = k3s_version(data)
    node_name = data.get("hostname") or default_hostname(host.name)
    binary_releases, image_releases = releases(data, version)
    unit_path = f"{UNIT_DIR}/{k3s.unit_name(role)}"
    old_server = host.state.inventory.get_host(data.k3s_move_from) if first and data.k3s_move_from else None
    # A change of these files that k3s has not taken up yet (a run stopped before the restart) is marked.
    pending = services.pending_marker(k3s.unit_name(role))
    managed: tuple[str, ...] = (k3s.CONFIG, k3s.TOKEN, k3s.VPN_AUTH, k3s.REGISTRIES, unit_path, pending)  # one command
    if old_server is not None:
        managed += (k3s.SERVER_TOKEN,)
    reads: list[tuple[Any, dict[str, Any]]] = [
        (InstalledRelease, {"component": "k3s", "paths": [k3s.BINARY]}), (FileStates, {"paths": managed}),
        (ServiceStates, {"units": (k3s.unit_name(role),)}), (Tailscale, {}),
    ]
    if data.k3s_airgap_images:
        reads.append((InstalledRelease, {"component": "k3s-airgap-images", "paths": [AIRGAP_IMAGES]}))
    # Early: read with the host's first prefetch.
    prefetch.facts(name=f"{label}: read the k3s state in one command", reads=reads, early=True)

    moved = None
    if old_server is not None:  # before the token: the cluster's token comes with it
        moved = k3s.moved_from(name=f"{label}: take over the cluster of {old_server.name}", source=old_server,
                               batch=managed)
    images = None
    if data.k3s_airgap_images:  # before the binary: an upgrade's restart then imports the new images
        images = release.installed(
            name=f"{label} airgap images", component="k3s-airgap-images", version=version,
            files={"": AIRGAP_IMAGES}, machines=image_releases, pending=pending,
        )
    binary = k3s.binary(
        name=f"{label} binary", version=version, machines=binary_releases,
        sha256=data.k3s_sha256, node_name=node_name, role=role, via=first_server,
        drain_timeout=int(data.k3s_drain_timeout), ready_timeout=int(data.k3s_ready_timeout), pending=pending,
    )
    if data.k3s_token:
        token = k3s.token(
            name=f"{label} cluster token", value=resolve_secret(data.k3s_token, "k3s_token"), batch=managed,
            pending=pending,
        )
    elif first:
        token = k3s.token(name=f"{label} cluster token", batch=managed, pending=pending)  # made once, copied
    elif role == "server":
        token = k3s.token(name=f"{label} cluster token", source=first_server, batch=managed, pending=pending)
    else:  # agents take the server's K10… form, which also pins the cluster CA
        token = k3s.token(
            name=f"{label} cluster token", source=first_server, source_path=k3s.SERVER_TOKEN, batch=managed,
            pending=pending,
        )
    native = data.k3s_tailnet_mode == "native"
    if native and headscale_host is None:
        raise DeployError("k3s_tailnet_mode 'native' needs headscale_host: k3s joins with a key minted there")
    vpn_auth = k3s.vpn_auth(
        name=f"{label}: k3s's own tailnet join settings (native mode)", present=native,
        login_server=data.get("headscale_url") or "", headscale_host=headscale_host,
        tags=host_tags(set(host.groups), list(data.get("tailscale_tags") or [])), batch=managed, pending=pending,
    )
    config = k3s.config(
        name=f"{label} config", role=role, node_name=node_name, settings=node_settings(data, role, first),
        join=None if first else first_server, tailnet_domain=data.get("tailnet_domain"),
        iface=data.k3s_tailnet_iface, mode=data.k3s_tailnet_mode, batch=managed, pending=pending,
    )
    wanted_registries = registries(data)
    registries_file = None if wanted_registries is None else files.content(
        name=f"{label} private registries (registries.yaml)", path=k3s.REGISTRIES,
        text=k3s.registries_text(wanted_registries), mode="0600", batch=managed, pending=pending,
    )
    unit = files.content(
        name=f"{label} unit", path=unit_path, text=render("k3s/k3s.service.j2", role=role), batch=managed,
        pending=pending,
    )
    left_pending = services.left_pending(pending, managed)
    systemd.daemon_reload(name=f"{label}: reload systemd", _if=lambda: unit.did_change() or left_pending())
    if old_server is not None and moved is not None:
        k3s.cluster_reset(name=f"{label}: restore {old_server.name}'s snapshot before the first start",
                          snapshot=k3s.moved_snapshot(old_server), _if=moved.did_change)
    # A fresh node starts here; a changed one restarts. An upgrade restarts in the binary operation, before this,
    # importing the new release's images then: new images alone restart here, with an upgrade they do not again.
    # k3s's units have no start timeout (an agent waits for its server for ever): wait k3s_ready_timeout at most.
    settings_changed = any_changed(config, token, unit, vpn_auth, *([registries_file] if registries_file else []))

    def restart_needed() -> bool:
        return bool(settings_changed() or (images and images.did_change() and not binary.did_change())
                    or left_pending())

    services.restarted(
        name=f"{label}: restart after a config, token or unit change", service=k3s.unit_name(role),
        timeout=int(data.k3s_ready_timeout), pending=pending, _if=restart_needed,
    )
    services.running(name=f"{label}: run", service=k3s.unit_name(role), timeout=int(data.k3s_ready_timeout))
    if first and data.k3s_kubeconfig:
        k3s.kubeconfig(name="Fetch the admin kubeconfig", local_path=data.k3s_kubeconfig)


def retire_moved_server(first_server: Host) -> None:
    """On the host named by the first server's ``k3s_move_from``: take k3s off it once the first server runs the
    cluster (call it after every k3s node's operations, see ``k3s.retired``)."""
    old = first_server.data.get("k3s_move_from")
    if not old:
        return
    if host.name == old or set(host.groups) & {"k3s_servers", "k3s_agents"}:
        # pyinfra orders operations across hosts only through operations they share: this one, on the old server
        # and every k3s node, puts the retirement after every node has moved to the new server.
        cross_host.barrier(name="Every k3s node follows the new server",
                           why="every k3s node's operations come before what follows")
    if host.name == old:
        k3s.retired(
            name=f"Retire the old k3s server (its cluster moved to {first_server.name})", successor=first_server,
            node_name=host.data.get("hostname") or default_hostname(host.name),
            remove_data=bool(host.data.get("k3s_remove_data")),
        )


@deploy("k3s", data_defaults=K3S_DEFAULTS)
def k3s_node(first_server: Host, headscale_host: Host | None = None) -> None:
    """
    k3s on a node of ``k3s_servers`` (a server) or ``k3s_agents`` (an agent), talking to the cluster over the
    tailnet. ``first_server`` starts the cluster (embedded etcd with ``k3s_cluster_init``); the other servers
    and the agents join it. Every server's operations run before any agent's (the agents need the running
    server's token; an upgrade goes servers first), so call this once for all k3s nodes, from one place.

    Data keys: ``portable_k3s.settings.k3s`` (with ``k3s_etcd_s3`` also ``s3_access_key``, ``s3_secret_key``);
    ``hostname``, ``tailnet_domain``, ``headscale_url`` (native mode), ``versions["k3s"]``.

    + first_server: the inventory host that starts the cluster (the first of ``k3s_servers``)
    + headscale_host: the inventory host running headscale (needed by the ``native`` tailnet mode only)

    .. code:: python

        k3s_node(first_server=inventory.get_group("k3s_servers")[0])
    """
    ssh_tcp_options()  # SSH without Nagle's delay, a lost host noticed: see portable_k3s.connection
    server = "k3s_servers" in host.groups
    if server:
        _k3s_node("server", first_server, headscale_host)
    # One operation for every k3s node: pyinfra orders each host's operations, and this one sits after the
    # servers' and before the agents', so all servers are done before any agent starts.
    cross_host.barrier(name="Servers before agents", why="the servers' operations come before the agents'")
    if not server:
        _k3s_node("agent", first_server, headscale_host)
