"""
cloud-init user-data that makes a fresh machine (a cloud VM) a tailnet node and k3s agent on its first boot:
``python -m portable_k3s cloud-init inventories/home.py --host NAME``.

The user-data installs what ``deploy.py`` installs for the host (tailscale and k3s at the inventory's versions, from
the same URLs, verified the same way; the same unit files, settings and ``config.yaml``) and joins with
credentials minted for it alone: a single-use tailnet pre-auth key from headscale and a k3s bootstrap token
(``k3s token create --ttl``) from the first server, both expiring after ``--expires``. A later
``pyinfra INVENTORY deploy.py --limit NAME`` finds tailscale and k3s as it would have left them.
"""

from __future__ import annotations

import datetime
import re
import shlex
from dataclasses import dataclass
from typing import Any

import yaml
from pyinfra.api import HiddenValue, StringCommand

from .config import ENTRANCE, EXIT_NODES, HEADSCALE, K3S_AGENTS, K3S_SERVERS, ClusterConfig, resolve_secret
from .deploys.base import default_hostname
from .deploys.headscale import host_tags
from .deploys.k3s import K3S_DEFAULTS, UNIT_DIR, airgap_images, k3s_version, node_settings, release_urls
from .deploys.tailscale import (
    APT_KEYRING,
    APT_LIST,
    DEFAULTS_FILE,
    STATIC_UNIT,
    TAILSCALE_DEFAULTS,
    WAIT_ONLINE_DROPIN,
    apt_source,
    static_release,
    tailscale_version,
)
from .operations import k3s
from .operations.cross_host import reaching
from .operations.headscale import mint_preauth_key
from .operations.release import install_command
from .operations.tailscale import settings_flags
from .render import render

JOIN_DIR = "/var/lib/portable-k3s/join"  # the join's secrets and config template, removed once used
JOIN_SCRIPT = "/usr/local/sbin/portable-k3s-join"
NODE_IP_PLACEHOLDER = "PORTABLE_K3S_TAILNET_IPV4"  # config.yaml's node-ip, filled in once the node has joined
MACHINES = ("x86_64", "aarch64", "armv7l")  # ``uname -m`` of the release files k3s and tailscale publish
JOIN_PACKAGES = ("curl", "ca-certificates")  # what the join script needs beyond a minimal Debian
JOINABLE = (K3S_AGENTS, EXIT_NODES)
DEPLOY_ONLY = frozenset({HEADSCALE, ENTRANCE, K3S_SERVERS})  # set up by deploy.py only
_EXPIRES_RE = re.compile(r"^([1-9][0-9]*)([mh])$")


class CloudInitError(Exception):
    """Bad input for ``cloud-init``, or a failed step on the headscale host or the first server."""


def check_expires(value: str) -> int:
    """Seconds of an ``--expires`` value (``30m``, ``2h``; at most 24h)."""
    found = _EXPIRES_RE.match(value)
    seconds = int(found.group(1)) * (60 if found.group(2) == "m" else 3600) if found else 0
    if not found or seconds > 24 * 3600:
        raise CloudInitError(f"--expires: {value!r} (expected minutes or hours up to 24h, like 30m or 2h: the "
                             "time the VM has to boot and join)")
    return seconds


def joinable(config: ClusterConfig, name: str) -> list[str]:
    """The groups of inventory host ``name`` that user-data can set up; a ``CloudInitError`` naming the hosts
    it can set up when ``name`` is not one of them."""
    fit = [h.name for h in config.hosts.values() if set(h.groups) & set(JOINABLE) and not set(h.groups) & DEPLOY_ONLY]
    host = config.hosts.get(name)
    if host is None:
        raise CloudInitError(f"--host: {name!r} is not in the inventory (hosts user-data can set up: "
                             f"{', '.join(fit) or 'none'})")
    if name not in fit:
        raise CloudInitError(
            f"--host: {name} is in {', '.join(sorted(host.groups)) or 'no group'}; user-data joins hosts of "
            f"{' and '.join(JOINABLE)} only (expected one of: {', '.join(fit) or 'none'}); a server, headscale "
            f"or an entrance is set up with `pyinfra INVENTORY deploy.py --limit {name}`"
        )
    return sorted(host.groups)


class _Data:
    """A host's data with the tailscale and k3s deploys' defaults under it (as the deploys see it)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = {**TAILSCALE_DEFAULTS, **K3S_DEFAULTS, **data}

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __getattr__(self, key: str) -> Any:
        return self._data.get(key)


@dataclass
class Credentials:
    """What the user-data joins with (values hidden), and where k3s's server is."""

    tailnet_key: HiddenValue
    k3s_token: HiddenValue | None = None
    server_ipv4: str | None = None


class _Literal(yaml.SafeDumper):
    """YAML with multi-line strings as literal blocks (the files in write_files stay readable)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Literal.add_representer(
    str, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)
)


def _file(path: str, content: str, mode: str) -> dict[str, str]:
    return {"path": path, "owner": "root:root", "permissions": mode, "content": content}


def _per_machine(build: Any) -> dict[str, str]:
    return {machine: build(machine).get_raw_value() for machine in MACHINES}


def render_user_data(name: str, groups: list[str], data: dict[str, Any], credentials: Credentials,
                     comment: str = "") -> str:
    """The ``#cloud-config`` user-data for inventory host ``name`` (in ``groups``, with ``data``)."""
    view = _Data(data)
    hostname = view.hostname or default_hostname(name)
    agent = K3S_AGENTS in groups
    native = agent and view.k3s_tailnet_mode == "native"
    key = credentials.tailnet_key.unmask()
    ts_version = tailscale_version(view)
    static = view.tailscale_install == "static"
    files: list[dict[str, str]] = []
    if static:
        files.append(_file(STATIC_UNIT, render("tailscaled.service.j2"), "0644"))
    files.append(_file(WAIT_ONLINE_DROPIN, render("tailscaled.wait-online.conf.j2"), "0644"))
    files.append(_file(DEFAULTS_FILE, render(
        "tailscaled.defaults.j2", port=view.tailscaled_port, env=dict(view.tailscaled_env or {}),
        flags="" if view.tailscale_upload_logs else "--no-logs-no-support",
    ), "0644"))
    if not native:
        files.append(_file(f"{JOIN_DIR}/tailscale-authkey", key, "0600"))

    def tailscale_install(machine: str) -> StringCommand:
        url, members = static_release(view.tailscale_download_url, ts_version, machine)
        return install_command("tailscale", ts_version, url, members, checksum_url=f"{url}.sha256")

    context: dict[str, Any] = {
        "host": name, "hostname": hostname, "join_dir": JOIN_DIR, "k3s": agent, "native": native,
        "tailscale_version": ts_version, "tailscale_static": static,
        "tailscale_install": _per_machine(tailscale_install) if static else {},
        "login_server_arg": shlex.quote(view.headscale_url or ""), "login_server": view.headscale_url,
        "flags": " ".join(shlex.quote(flag) for flag in settings_flags(
            hostname, bool(view.tailscale_accept_dns), bool(view.tailscale_accept_routes), "exit_nodes" in groups,
            list(view.tailscale_advertise_routes or []), snat=not agent)),  # see tailscale.joined
    }
    key_url, apt_line = apt_source("${VERSION_CODENAME}")
    context.update(apt_keyring=APT_KEYRING, apt_keyring_dir=APT_KEYRING.rsplit("/", 1)[0], apt_list=APT_LIST,
                   apt_key_url=key_url, apt_line=apt_line)
    if agent:
        if credentials.k3s_token is None or (credentials.server_ipv4 is None):
            raise CloudInitError(f"{name} is a k3s agent: the user-data needs a k3s token and the server's address")
        version = k3s_version(view)

        def k3s_install(machine: str) -> StringCommand:
            url, sums = release_urls(view.k3s_download_url, version, machine)
            binary = install_command("k3s", version, url, {"": k3s.BINARY},
                                     None if view.k3s_sha256 else sums, view.k3s_sha256)
            if not view.k3s_airgap_images:
                return binary
            images_url, images_path = airgap_images(view.k3s_download_url, version, machine)
            images = install_command("k3s-airgap-images", version, images_url, {"": images_path}, sums)
            return StringCommand(images, ") && (", binary)

        settings = k3s.config_settings(
            "agent", hostname, node_settings(view, "agent", False), NODE_IP_PLACEHOLDER, credentials.server_ipv4,
            view.tailnet_domain, view.k3s_tailnet_iface, view.k3s_tailnet_mode,
        )
        config_text = k3s.config_text(settings, view.k3s_tailnet_iface, view.k3s_tailnet_mode)
        unit = k3s.unit_name("agent")
        files += [
            _file(k3s.TOKEN, credentials.k3s_token.unmask().strip() + "\n", "0600"),
            _file(k3s.CONFIG if native else f"{JOIN_DIR}/k3s-config.yaml", config_text, "0600"),
            _file(f"{UNIT_DIR}/{unit}", render("k3s/k3s.service.j2", role="agent"), "0644"),
        ]
        if native:
            files.append(_file(k3s.VPN_AUTH, k3s.vpn_auth_text(key, view.headscale_url) + "\n", "0600"))
        context.update(
            k3s_version=version, k3s_install=_per_machine(k3s_install), placeholder=NODE_IP_PLACEHOLDER,
            config=k3s.CONFIG, unit=unit, ready_timeout=int(view.k3s_ready_timeout),
            server_url=f"https://{credentials.server_ipv4}:{k3s.SUPERVISOR_PORT}",
        )
    files.append(_file(JOIN_SCRIPT, render("cloud-init/join.sh.j2", **context), "0700"))
    document = {
        "hostname": hostname,
        "preserve_hostname": False,
        "packages": list(JOIN_PACKAGES),  # installed (after an apt update) before runcmd runs the join
        "write_files": files,
        "runcmd": [[JOIN_SCRIPT]],
    }
    head = "#cloud-config\n" + "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return head + yaml.dump(document, Dumper=_Literal, sort_keys=False, default_flow_style=False, width=1000)


def mint_credentials(inventory: Any, config: ClusterConfig, name: str, expires: str) -> Credentials:
    """Mint the join credentials of ``name`` over SSH: a single-use tagged pre-auth key on the headscale host,
    valid for ``expires``; for a k3s agent, a k3s bootstrap token with that TTL on the first server (or the
    inventory's ``k3s_token``) and the first server's tailnet IPv4. Nothing of them is printed."""
    from pyinfra.api import Config, State
    from pyinfra.api.exceptions import ConnectError

    host = inventory.get_host(name)
    groups = sorted(config.hosts[name].groups)
    state = State(inventory, Config(CONNECT_TIMEOUT=10))
    needed = [inventory.get_group("headscale")[0]]
    if K3S_AGENTS in groups:
        needed.append(inventory.get_group(K3S_SERVERS)[0])
    try:
        for target in needed:
            try:
                target.connect(show_errors=False, raise_exceptions=True)
            except ConnectError as exc:
                raise CloudInitError(f"{target.name}: cannot connect over SSH: {exc}") from exc
        view = _Data(host.data.dict())
        credentials = Credentials(tailnet_key=HiddenValue(""))
        if K3S_AGENTS in groups:
            server = needed[1]
            ok, output = _run(server, StringCommand("tailscale ip -4"))
            ipv4 = output.stdout.strip().splitlines()[0] if ok and output.stdout.strip() else ""
            if not ipv4:
                raise CloudInitError(f"{server.name} has no tailnet IPv4: deploy the cluster first")
            credentials.server_ipv4 = ipv4
            if view.k3s_token:
                credentials.k3s_token = resolve_secret(view.k3s_token, "k3s_token")
            else:
                ok, output = _run(server, StringCommand(
                    "k3s token create --ttl", expires, "--description", shlex.quote(f"portable-k3s cloud-init {name}"),
                ))
                token = output.stdout.strip() if ok else ""
                if not token.startswith("K10"):
                    raise CloudInitError(f"k3s token create on {server.name} failed: {output.stderr[-300:]}")
                credentials.k3s_token = HiddenValue(token)
        try:
            credentials.tailnet_key = mint_preauth_key(
                needed[0], host_tags(set(groups), list(view.tailscale_tags or [])), expiration=expires
            )
        except Exception as exc:  # pyinfra's OperationError, with headscale's message
            raise CloudInitError(str(exc)) from exc
        del state
        return credentials
    finally:
        for target in needed:
            if target.connected:
                target.disconnect()


def _run(target: Any, command: StringCommand) -> tuple[bool, Any]:
    with reaching(target, "minting the join credentials") as sudo:
        return target.run_shell_command(command, print_output=False, print_input=False, **sudo)


def header(name: str, expires_seconds: int, now: datetime.datetime | None = None, static_token: bool = False) -> str:
    """The comment at the top of the user-data: what it is, and until when it works."""
    until = (now or datetime.datetime.now(datetime.UTC)) + datetime.timedelta(seconds=expires_seconds)
    stamp = until.strftime("%Y-%m-%d %H:%M UTC")
    token = "the inventory's k3s_token (does not expire)" if static_token else f"a k3s join token (expires {stamp})"
    return (f"portable-k3s: {name} joins the tailnet and k3s on its first boot (python -m portable_k3s cloud-init).\n"
            f"Holds a single-use tailnet key (expires {stamp}) and {token}: keep it private.")
