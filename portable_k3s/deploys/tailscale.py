"""A tailscale node joined to the headscale tailnet."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import Host, deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, systemd
from pyinfra.operations import files as pyinfra_files
from pyinfra.operations.util import any_changed

from ..adapter import current_host
from ..connection import ssh_tcp_options
from ..facts.files import FileStates
from ..facts.release import InstalledRelease
from ..facts.services import ServiceState, ServiceStates
from ..facts.tailscale import Tailscale
from ..operations import files, prefetch, release, services, tailscale
from ..operations.util import run_start_fact, shared_fact
from ..render import render
from ..settings import defaults
from ..settings import tailnet as tailnet_settings
from ..versions import VERSIONS
from .base import default_hostname
from .headscale import host_tags

K3S_GROUPS = {"k3s_servers", "k3s_agents"}
K3S_UNITS = ("k3s.service", "k3s-agent.service")
K3S_RESTART_TIMEOUT = 300  # seconds for k3s to be active again after tailscaled restarted

TAILSCALE_DEFAULTS: dict[str, Any] = defaults(tailnet_settings.SETTINGS)  # portable_k3s.settings.tailnet

STATIC_UNIT = "/etc/systemd/system/tailscaled.service"
WAIT_ONLINE_DROPIN = "/etc/systemd/system/tailscaled.service.d/10-wait-online.conf"
STATIC_BINARIES = ("/usr/local/bin/tailscale", "/usr/local/sbin/tailscaled")
DEFAULTS_FILE = "/etc/default/tailscaled"
APT_KEYRING = "/usr/share/keyrings/tailscale-archive-keyring.gpg"
APT_LIST = "/etc/apt/sources.list.d/tailscale.list"


def tailscale_version(data: Any) -> str:
    """The tailscale version a host's data asks for (``versions["tailscale"]``, else the pinned one), no ``v``."""
    return str((data.get("versions") or {}).get("tailscale", VERSIONS["tailscale"])).lstrip("v")


def k3s_older_than_tailscaled(states: dict[str, ServiceState]) -> bool:
    """Whether a running k3s unit became active before tailscaled last did (``ServiceStates`` of both)."""
    tailscaled = states["tailscaled.service"].get("since", 0) if "tailscaled.service" in states else 0
    return any(unit in states and states[unit]["active"] and 0 < states[unit].get("since", 0) < tailscaled
               for unit in K3S_UNITS)


def tailscaled_environment(data: Any) -> dict[str, str]:
    """tailscaled's extra environment: ``tailscaled_env``, and ``tailscale_mtu`` as ``TS_DEBUG_MTU`` (tailscaled
    reads it when it starts)."""
    env = {str(key): str(value) for key, value in (data.get("tailscaled_env") or {}).items()}
    if data.get("tailscale_mtu"):
        env["TS_DEBUG_MTU"] = str(data.get("tailscale_mtu"))
    return env


def static_release(base: str, version: str, machine: str) -> tuple[str, dict[str, str]]:
    """The static tarball's URL for ``machine`` (``uname -m``) and ``{member: installed path}`` of its binaries."""
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, "amd64")
    stem = f"tailscale_{version}_{arch}"
    return f"{base.rstrip('/')}/{stem}.tgz", {f"{stem}/{name.rsplit('/', 1)[1]}": name for name in STATIC_BINARIES}


def apt_source(codename: str) -> tuple[str, str]:
    """The tailscale package repository's signing key URL and ``sources.list`` line for a Debian ``codename``."""
    key = f"https://pkgs.tailscale.com/stable/debian/{codename}.noarmor.gpg"
    return key, f"deb [signed-by={APT_KEYRING}] https://pkgs.tailscale.com/stable/debian {codename} main"


@deploy("Tailscale node", data_defaults=TAILSCALE_DEFAULTS)
def tailscale_node(headscale_host: Host) -> None:
    """
    Install tailscale at the pinned version, run tailscaled and join the tailnet. Data keys: the
    ``tailscale*`` ones of ``portable_k3s.settings.tailnet``, ``headscale_url``, ``hostname``,
    ``versions["tailscale"]``.
    Hosts in ``exit_nodes`` advertise themselves as exit nodes; tags come from the host's groups.

    + headscale_host: the inventory host running headscale (pre-auth keys are minted there)
    """
    ssh_tcp_options()  # SSH without Nagle's delay, a lost host noticed: see portable_k3s.connection
    data = host.data
    version = tailscale_version(data)
    pending = services.pending_marker("tailscaled.service")
    managed: tuple[str, ...] = (WAIT_ONLINE_DROPIN, DEFAULTS_FILE, pending)
    if data.tailscale_install == "static":
        managed = (STATIC_UNIT, *managed)
    k3s_node = bool(set(host.groups) & K3S_GROUPS)
    units = ("tailscaled.service", *(K3S_UNITS if k3s_node else ()))
    reads: list[tuple[Any, dict[str, Any]]] = [
        (FileStates, {"paths": managed}), (ServiceStates, {"units": units}), (Tailscale, {}),
    ]
    static: list[tuple[Any, dict[str, Any]]] = []
    if data.tailscale_install == "static":
        reads.append((InstalledRelease, {"component": "tailscale", "paths": list(STATIC_BINARIES)}))
    else:
        static = [(LinuxDistribution, {})]  # the package repository's release
    # Early, too: a headscale restart or restore earlier in the run (on another host) can leave the status saying
    # Running for a key headscale no longer knows, but joining checks the key against headscale's node list,
    # read when the node joins.
    prefetch.facts(name="Read the tailscale state in one command", reads=reads, static=static, early=True)
    if data.tailscale_install == "static":
        machines = {}
        for machine in release.MACHINES:
            url, members = static_release(data.tailscale_download_url, version, machine)
            machines[machine] = {"url": url, "checksum_url": f"{url}.sha256", "files": members}
        binary = release.installed(
            name="Install tailscale (static)", component="tailscale", version=version, machines=machines,
            pending=pending,
        )
        unit = files.content(
            name="tailscaled unit", path=STATIC_UNIT, text=render("tailscaled.service.j2"), batch=managed,
            pending=pending,
        )
    else:
        release_meta = shared_fact(host, LinuxDistribution, static=True).get("release_meta") or {}
        codename = release_meta.get("VERSION_CODENAME", "bookworm")
        key_url, source_line = apt_source(codename)
        pyinfra_files.download(name="tailscale apt key", src=key_url, dest=APT_KEYRING, mode="644")
        source = pyinfra_files.line(name="tailscale apt source", path=APT_LIST, line=source_line)
        apt.update(name="apt lists with tailscale", _if=source.did_change)
        binary = apt.packages(name="Install tailscale (apt)", packages=[f"tailscale={version}"])
        unit = binary
    wait_online = files.content(
        name="tailscaled starts once the network is online", path=WAIT_ONLINE_DROPIN,
        text=render("tailscaled.wait-online.conf.j2"), batch=managed,
    )
    # A change written by a run that stopped before restarting tailscaled is still to be taken up.
    left_pending = services.left_pending(pending, managed)
    unit_changed = any_changed(unit, wait_online)
    systemd.daemon_reload(name="Reload systemd for tailscaled", _if=lambda: unit_changed() or left_pending())
    env = files.content(
        name="tailscaled settings", path=DEFAULTS_FILE, batch=managed, pending=pending,
        text=render(
            "tailscaled.defaults.j2", port=data.tailscaled_port, env=tailscaled_environment(data),
            flags="" if data.tailscale_upload_logs else "--no-logs-no-support",
        ),
    )
    services.running(name="Run tailscaled", service="tailscaled.service", batch=units)
    changed = any_changed(binary, unit, env)
    restart = services.restarted(
        name="Restart tailscaled after a change", service="tailscaled.service", pending=pending,
        _if=lambda: changed() or left_pending(),
    )
    joined = tailscale.joined(
        name="Join the tailnet",
        login_server=data.headscale_url,
        headscale_host=headscale_host,
        tags=host_tags(set(host.groups), list(data.tailscale_tags)),
        hostname=data.get("hostname") or default_hostname(host.name),
        accept_dns=data.tailscale_accept_dns,
        accept_routes=data.tailscale_accept_routes,
        exit_node="exit_nodes" in host.groups,
        routes=list(data.tailscale_advertise_routes),
        routes_by_k3s=bool(set(host.groups) & K3S_GROUPS) and data.get("k3s_tailnet_mode") == "native",
        # Traefik's host ports must see the entrance's tailnet address (PROXY protocol trusted from it only).
        snat=not set(host.groups) & K3S_GROUPS,
    )
    if k3s_node:
        # flannel's VXLAN device sits on tailscale0, and the kernel removes it with tailscale0 when tailscaled
        # restarts (a changed tailscale, a re-join); k3s does not notice: restart it, so that it makes it anew.
        # Also when k3s has run since before tailscaled's last start: a run stopped between the two restarts, or
        # tailscaled restarted outside the deploy (an upgrade, by hand).
        node = current_host()
        restarted = any_changed(restart, joined)

        def k3s_needs_restart() -> bool:  # asked when the run gets there: the prefetch has read the units then
            return bool(restarted()) or k3s_older_than_tailscaled(run_start_fact(node, ServiceStates, units=units))

        services.restarted_if_running(
            name="Restart k3s after tailscaled restarted (flannel's VXLAN device is on tailscale0)",
            services=list(K3S_UNITS), timeout=K3S_RESTART_TIMEOUT, _if=k3s_needs_restart,
        )
