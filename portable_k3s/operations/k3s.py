"""k3s over the tailnet: its config, the cluster token, the binary (installed, or upgraded one node at a time)."""

from __future__ import annotations

import re
import time
from io import BytesIO, StringIO
from typing import Any

import gevent
import yaml
from pyinfra import host
from pyinfra.api import (
    HiddenValue,
    Host,
    OperationError,
    OperationValueError,
    QuoteString,
    State,
    StringCommand,
)
from pyinfra.api.command import FunctionCommand

from ..adapter import executing, run_store
from ..facts.files import FileStates
from ..facts.k3s import CNI_INTERFACES, K3S_DATA, K3S_FILES, K3sFootprint, K3sFootprintInfo, parse_nodes
from ..facts.release import InstalledRelease
from ..facts.tailscale import Tailscale
from ..render import render, to_yaml
from . import files, release
from .cross_host import reaching, run_on
from .headscale import expire_preauth_key, mint_preauth_key
from .services import clearing, start_command
from .util import escalation, host_operation, shared_fact

CONFIG = "/etc/rancher/k3s/config.yaml"
KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"  # the admin kubeconfig a server writes
TOKEN = "/etc/rancher/k3s/token"  # noqa: S105 - a path: the cluster token every node starts with
REGISTRIES = "/etc/rancher/k3s/registries.yaml"  # containerd's mirrors and registry credentials, read at start
VPN_AUTH = "/etc/rancher/k3s/vpn-auth"  # the "native" tailnet mode's join settings (holds a pre-auth key)
SERVER_TOKEN = "/var/lib/rancher/k3s/server/token"  # noqa: S105 - a path: K10<CA hash>::server:<token>
SNAPSHOT_DIR = "/var/lib/rancher/k3s/server/db/snapshots"
MOVE_SNAPSHOT = "portable-k3s-move"  # the on-demand etcd snapshot a server move takes on the old server
BINARY = "/usr/local/bin/k3s"
KUBECTL = "k3s kubectl"
SUPERVISOR_PORT = 6443
ROLES = ("server", "agent")
MODES = ("manual", "native")
# Keys the deploy sets itself; k3s_extra_config may not override them.
MANAGED_KEYS = frozenset(
    {"node-name", "node-ip", "advertise-address", "flannel-iface", "tls-san", "server", "token", "token-file",
     "write-kubeconfig-mode", "vpn-auth", "vpn-auth-file"}
)


def unit_name(role: str) -> str:
    """The systemd unit of a k3s ``server`` (``k3s.service``) or ``agent`` (``k3s-agent.service``)."""
    return "k3s.service" if role == "server" else "k3s-agent.service"


def registries_text(registries: dict[str, Any]) -> str:
    """k3s's ``registries.yaml``: ``mirrors`` and ``configs`` as k3s reads them (credentials already resolved)."""
    body = {key: registries[key] for key in ("mirrors", "configs") if registries.get(key)}
    header = ("# Written by portable-k3s from k3s_registries; k3s reads it when it starts (a change restarts k3s).\n"
              "# It holds registry credentials: root only.\n")
    return header + (to_yaml(body) + "\n" if body else "{}\n")


def config_text(settings: dict[str, Any], iface: str = "tailscale0", mode: str = "manual") -> str:
    """``/etc/rancher/k3s/config.yaml`` for ``settings`` (keys in k3s's flag names, without ``--``)."""
    body = yaml.safe_dump(settings, default_flow_style=False, sort_keys=True).rstrip("\n")
    return render("k3s/config.yaml.j2", mode=mode, iface=iface, settings=body)


def config_settings(
    role: str, node_name: str, settings: dict[str, Any], ipv4: str | None, server_ipv4: str | None,
    tailnet_domain: str | None = None, iface: str = "tailscale0", mode: str = "manual",
) -> dict[str, Any]:
    """Every ``config.yaml`` key of a node: ``settings`` plus the ones set from the tailnet (see ``config``)."""
    full: dict[str, Any] = {**settings, "node-name": node_name, "token-file": TOKEN}
    if mode == "native":
        full["vpn-auth-file"] = VPN_AUTH
    else:
        full.update({"node-ip": ipv4, "flannel-iface": iface})
    if server_ipv4:
        full["server"] = f"https://{server_ipv4}:{SUPERVISOR_PORT}"
    if role == "server":
        if mode == "manual":
            full["advertise-address"] = ipv4
        full["tls-san"] = [ipv4, node_name, *([f"{node_name}.{tailnet_domain}"] if tailnet_domain else [])]
        full["write-kubeconfig-mode"] = "0600"
    return full


def vpn_auth_text(key: str, login_server: str) -> str:
    """The ``vpn-auth-file`` k3s reads in the "native" tailnet mode."""
    return f"name=tailscale,joinKey={key},controlServerURL={login_server}"


def put_secret(host: Host, path: str, text: str, sudo: dict[str, Any], pending: str | None = None) -> None:
    """Write ``text`` to ``path`` (0600, staged then moved into place, ``pending`` marked first) from inside a
    ``FunctionCommand``, printing neither the command's input nor its output."""
    staged = f"{path}.portable-k3s-new"
    ok, _ = host.run_shell_command(
        StringCommand("install -d -m 0755", QuoteString(path.rsplit("/", 1)[0]), "&& install -m 0600 /dev/null",
                      QuoteString(staged)), **sudo,
    )
    if not ok or not host.put_file(StringIO(text), staged, print_output=False, print_input=False, **sudo):
        raise OSError(f"writing {staged} on {host.name} failed")
    ok, out = host.run_shell_command(
        StringCommand(*files.marked(pending), "mv -f", QuoteString(staged), QuoteString(path)), **sudo
    )
    if not ok:
        raise OSError(f"installing {path} on {host.name} failed: {out.stderr[-300:]}")


@host_operation()
def config(
    role: str,
    node_name: str,
    settings: dict[str, Any],
    join: Host | None = None,
    tailnet_domain: str | None = None,
    iface: str = "tailscale0",
    mode: str = "manual",
    path: str = CONFIG,
    batch: tuple[str, ...] | None = None,
    pending: str | None = None,
):
    """
    Write k3s's ``config.yaml`` (0600) for a node that talks to the cluster over the tailnet: ``node-ip`` (and
    on a server ``advertise-address`` and ``tls-san``) is the node's tailnet IPv4, read from tailscale on the
    node; ``flannel-iface`` is the tailnet interface, so flannel's VXLAN MTU is its MTU minus 50 (1230 on
    tailscale's 1280); a joining node's ``server`` is the ``join`` host's tailnet IPv4. In the ``native``
    mode k3s finds its addresses through tailscale itself (``vpn-auth-file``, see ``vpn_auth``): no node-ip,
    advertise-address or flannel-iface then.

    + role: ``server`` or ``agent``
    + node_name: the node's name in k3s (its tailnet host name)
    + settings: everything else, in k3s's flag names (``disable``, ``node-label``, ``cluster-init``, …)
    + join: the server this node joins (None for the first server)
    + tailnet_domain: the MagicDNS domain (a server's ``tls-san`` gets ``<node_name>.<tailnet_domain>``)
    + iface: the tailnet interface
    + mode: ``manual`` (the addresses above) or ``native`` (k3s's own tailscale integration)
    + path: where k3s reads its config
    + batch: all files of the component, read in one remote command (see ``files.content``)
    + pending: a marker made before a new file goes into place, for k3s to be restarted even if this run stops
      first (``services.pending_marker``; see ``services.restarted``)

    **Example:**

    .. code:: python

        k3s.config(name="k3s config", role="agent", node_name="t420", settings={}, join=master)
    """
    if role not in ROLES:
        raise OperationValueError(f"role: {role!r} (expected 'server' or 'agent')")
    if role == "agent" and join is None:
        raise OperationValueError("join: an agent needs the server it joins")
    if mode not in MODES:
        raise OperationValueError(f"mode: {mode!r} (expected 'manual' or 'native')")
    clash = sorted(MANAGED_KEYS & set(settings))
    if clash:
        raise OperationValueError(f"settings: {', '.join(clash)} are set from the tailnet, not by settings")
    ipv4 = shared_fact(host, Tailscale)["ipv4"]  # tailscale.joined forgets it when it (re-)joins the node
    server_ipv4 = shared_fact(join, Tailscale)["ipv4"] if join is not None else None
    missing = [name for name, ip in ((node_name, ipv4), (join and join.name, server_ipv4)) if name and not ip]
    if missing:
        if not executing(host.state):  # planned before the tailnet is up (--dry): written when it is
            host.noop(f"{path}: written once {' and '.join(missing)} has a tailnet address")
            return
        raise OperationError(f"{' and '.join(missing)} has no tailnet IPv4: join the tailnet before k3s")
    full = config_settings(role, node_name, settings, ipv4, server_ipv4, tailnet_domain, iface, mode)
    yield from files.content._inner(path=path, text=config_text(full, iface, mode), mode="0600", batch=batch,
                                    pending=pending)


@host_operation(changes=(FileStates,))
def vpn_auth(
    login_server: str,
    headscale_host: Host | None,
    tags: list[str],
    present: bool = True,
    path: str = VPN_AUTH,
    batch: tuple[str, ...] | None = None,
    pending: str | None = None,
):
    """
    Give k3s its ``vpn-auth-file`` (0600) for the "native" tailnet mode: ``name=tailscale``, the headscale URL
    and a pre-auth key minted for it on the headscale host at execution (single use, short-lived, tagged; never
    printed, never in this deploy's argv). A node that has the file keeps it. k3s uses the key only when
    tailscale is not running as it starts: it then runs ``tailscale up --reset --authkey <key>`` itself, with
    the key on that command line (k3s's behaviour, see the README).

    + login_server: the headscale URL
    + headscale_host: the inventory host running headscale
    + tags: the tags of the minted key (``tag:NAME``)
    + present: False removes the file and expires its key on headscale (the "manual" mode has no use for it)
    + path: the file named by ``vpn-auth-file`` in config.yaml
    + batch: all files of the component, read in one remote command (see ``files.content``)
    + pending: a marker made before a new file goes into place, for k3s to be restarted even if this run stops
      first (``services.pending_marker``; see ``services.restarted``)

    **Example:**

    .. code:: python

        k3s.vpn_auth(name="k3s tailnet join", login_server="https://headscale.example.org",
                     headscale_host=cloud, tags=["tag:k3s"])
    """
    if present and (not tags or not all(t.startswith("tag:") for t in tags)):
        raise OperationValueError(f"tags: {tags!r} (expected at least one tag:NAME)")
    current = shared_fact(host, FileStates, paths=tuple(batch or (path,))).get(path)
    sudo = escalation(host, use_current_op=True)
    if not present:
        if current is None:
            host.noop(f"{path} does not exist")
            return

        def retire_vpn_auth(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
            ok, output = host.run_shell_command(
                StringCommand("cat", QuoteString(path)), print_output=False, print_input=False, **sudo
            )
            found = re.search(r"joinKey=([^,\s]+)", output.stdout if ok else "")
            if found and headscale_host is not None:
                expire_preauth_key(headscale_host, HiddenValue(found.group(1)))

        yield FunctionCommand(retire_vpn_auth, (), {})
        yield StringCommand(*files.marked(pending), "rm -f", QuoteString(path))
        return
    if current is not None and current["mode"] == "600":
        host.noop(f"{path} holds k3s's tailnet join settings")
        return
    if headscale_host is None:
        raise OperationValueError("headscale_host: needed to mint the join key")

    def write_vpn_auth(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        key = mint_preauth_key(headscale_host, tags)
        put_secret(host, path, vpn_auth_text(key.unmask(), login_server), sudo, pending)

    yield FunctionCommand(write_vpn_auth, (), {})


@host_operation(changes=(FileStates,))
def token(
    value: HiddenValue | None = None,
    source: Host | None = None,
    source_path: str = TOKEN,
    path: str = TOKEN,
    batch: tuple[str, ...] | None = None,
    pending: str | None = None,
):
    """
    Put the cluster token in ``path`` (0600), never in argv or output: the given ``value``; else a copy of
    ``source_path`` on ``source`` (read there at execution, over its open connection); else, on the first
    server, a fresh random token if there is none yet.

    + value: the token (from the inventory's ``k3s_token``)
    + source: the host to copy it from (the first server), when ``value`` is None
    + source_path: the file holding it there: the plain token, or a server's ``K10…`` token (which also pins
      the cluster CA for agents)
    + path: the token file k3s reads (``token-file``)
    + batch: all files of the component, read in one remote command (see ``files.content``)
    + pending: a marker made before a new file goes into place, for k3s to be restarted even if this run stops
      first (``services.pending_marker``; see ``services.restarted``)

    **Example:**

    .. code:: python

        k3s.token(name="Cluster token", source=master, source_path=k3s.SERVER_TOKEN)
    """
    if value is not None:
        yield from files.content._inner(path=path, text=value.unmask().strip() + "\n", mode="0600", batch=batch,
                                        pending=pending)
        return
    mine = shared_fact(host, FileStates, paths=tuple(batch or (path,))).get(path)
    if source is None:
        if mine is not None and mine["mode"] == "600":
            host.noop(f"{path} holds the cluster token")
            return
        yield StringCommand(
            *files.marked(pending), "install -d -m 0755", QuoteString(path.rsplit("/", 1)[0]), "&& ( umask 077; [ -s",
            QuoteString(path),
            "] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' >", QuoteString(path), "; echo >>",
            QuoteString(path), ") && chmod 0600", QuoteString(path),
        )
        return
    theirs = shared_fact(source, FileStates, paths=(source_path,)).get(source_path)
    if theirs is None:
        if not executing(host.state):
            host.noop(f"{path}: copied from {source.name} once it has its token")
            return
        raise OperationError(f"{source.name} has no {source_path}: the first server must be up before others join")
    if mine is not None and mine["sha256"] == theirs["sha256"] and mine["mode"] == "600":
        host.noop(f"{path} holds {source.name}'s cluster token")
        return
    sudo = escalation(host, use_current_op=True)

    yield FunctionCommand(_copy_token, (source, source_path, path, sudo, pending), {})


def kubeconfig_marker(source: str, sha: str, server_url: str) -> str:
    """The first line of a fetched kubeconfig: where it came from, so a converged copy is left alone."""
    return f"# portable-k3s: {source} sha256 {sha}, server {server_url}\n"


@host_operation()
def kubeconfig(local_path: str, path: str = KUBECONFIG):
    """
    Fetch the admin kubeconfig from this server to the machine running pyinfra (``local_path``, mode 0600,
    written atomically), with its server URL rewritten to this server's tailnet address. A copy that came from
    the same file and points at the same address is left alone; the credentials are never printed.

    + local_path: where to write it on the machine running pyinfra
    + path: the kubeconfig on the server

    **Example:**

    .. code:: python

        k3s.kubeconfig(name="Fetch the admin kubeconfig", local_path="~/.kube/portable-k3s.yaml")
    """
    import os

    local = os.path.expanduser(local_path)
    remote = shared_fact(host, FileStates, paths=(path,)).get(path)
    ipv4 = shared_fact(host, Tailscale)["ipv4"]
    if remote is None or not ipv4:
        if not executing(host.state):
            host.noop(f"{path}: fetched once k3s has written it")
            return
        raise OperationError(f"{host.name} has no {path} (or no tailnet address): is k3s running there?")
    server_url = f"https://{ipv4}:{SUPERVISOR_PORT}"
    marker = kubeconfig_marker(f"{host.name}:{path}", remote["sha256"], server_url)
    try:
        with open(local, encoding="utf-8") as existing:
            first = existing.readline()
        current_mode = os.stat(local).st_mode & 0o777
    except OSError:
        first, current_mode = "", 0
    if first == marker and current_mode == 0o600:
        host.noop(f"{local_path} holds {host.name}'s admin kubeconfig for {server_url}")
        return
    sudo = escalation(host, use_current_op=True)

    def fetch(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        ok, output = host.run_shell_command(
            StringCommand("cat", QuoteString(path)), print_output=False, print_input=False, **sudo
        )
        if not ok or "server:" not in output.stdout:
            raise OperationError(f"reading {path} on {host.name} failed")
        text = re.sub(r"(?m)^(\s*server:\s*)https://[^\s]+", rf"\g<1>{server_url}", output.stdout)
        directory = os.path.dirname(local) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        staged = f"{local}.portable-k3s-new"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as new:
            os.fchmod(new.fileno(), 0o600)
            new.write(marker + text.rstrip("\n") + "\n")
        os.replace(staged, local)

    yield FunctionCommand(fetch, (), {})


@host_operation()
def uninstalled(remove_data: bool = False):
    """
    Remove k3s from a node: stop and disable its unit, stop the containers it ran, remove its unit, binary,
    config, token and recorded version; with ``remove_data``, also its data and runtime directories, its CNI
    interfaces and its iptables rules (what k3s's own uninstall script removes). A node without k3s is left alone.

    + remove_data: also remove the cluster's data on this node (etcd, images, volumes of local-path): it cannot
      rejoin as the same node afterwards

    **Example:**

    .. code:: python

        k3s.uninstalled(name="Remove k3s", remove_data=True)
    """
    found = host.get_fact(K3sFootprint)
    if not _leftovers(found, remove_data):
        host.noop("k3s is not installed" + (" and left no data" if remove_data else ""))
        return
    yield from _uninstall_commands(remove_data)


def _leftovers(found: K3sFootprintInfo, remove_data: bool) -> list[str]:
    leftovers = found["files"] + (found["data"] + found["interfaces"] if remove_data else [])
    if remove_data and found["iptables_rules"]:
        leftovers.append(f"{found['iptables_rules']} iptables rules")
    return leftovers


def _uninstall_commands(remove_data: bool) -> Any:
    yield StringCommand(
        "for unit in k3s.service k3s-agent.service; do systemctl disable --now \"$unit\" 2>/dev/null || true;",
        # As k3s-killall.sh: each container's shim and its first process (which takes the container with it).
        "done; for shim in $(pgrep -f 'k3s/data/[^/]+/bin/containerd-shim'); do pkill -9 -P \"$shim\";",
        "kill -9 \"$shim\"; done 2>/dev/null || true",
    )
    yield StringCommand("rm -f", *(QuoteString(path) for path in K3S_FILES), "&& systemctl daemon-reload")
    if remove_data:
        yield StringCommand(
            "for m in $(awk '$2 ~ \"^(/run/k3s|/var/lib/kubelet|/run/netns/cni-)\" {print $2}' /proc/self/mounts"
            " | sort -r); do umount \"$m\" 2>/dev/null || umount -l \"$m\"; done;",
            "rm -rf", *(QuoteString(path) for path in K3S_DATA), ";",
            "for i in", *CNI_INTERFACES, "; do ip link delete \"$i\" 2>/dev/null || true; done;",
            "if rules=$(iptables-save 2>/dev/null); then",
            "printf '%s\\n' \"$rules\" | grep -vE 'KUBE-|CNI-|FLANNEL|flannel' | iptables-restore; fi",
        )


def moved_snapshot(source: Host) -> str:
    """Where ``moved_from`` puts the snapshot of ``source``'s cluster on the new server."""
    return f"{SNAPSHOT_DIR}/{MOVE_SNAPSHOT}-from-{source.name}"


@host_operation(changes=(FileStates,))
def moved_from(source: Host, batch: tuple[str, ...] | None = None):
    """
    Make this new server take over the cluster of ``source``, the server it replaces: unless this host already
    has a cluster (k3s's server token), take an etcd snapshot on ``source`` (``k3s etcd-snapshot save``) and copy
    it and ``source``'s cluster token here (0600; the token is never printed). ``cluster_reset`` then restores
    the snapshot before k3s first starts here; ``retired`` takes k3s off ``source`` at the end of the run.

    + source: the inventory host that runs the cluster's first server now
    + batch: all files of the component, read in one remote command (see ``files.content``)

    **Example:**

    .. code:: python

        moved = k3s.moved_from(name="Take over the cluster", source=inventory.get_host("master"))
    """
    if shared_fact(host, FileStates, paths=tuple(batch or (SERVER_TOKEN,))).get(SERVER_TOKEN) is not None:
        host.noop(f"this server runs a cluster already ({SERVER_TOKEN} exists)")
        return
    sudo = escalation(host, use_current_op=True)
    target = moved_snapshot(source)

    def fetch_snapshot(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        with reaching(source, "taking the etcd snapshot") as theirs:
            ok, output = source.run_shell_command(
                StringCommand("k3s etcd-snapshot save --name", MOVE_SNAPSHOT, ">/dev/null 2>&1 && ls -t",
                              f"{SNAPSHOT_DIR}/{MOVE_SNAPSHOT}-*", "| head -n 1"), print_output=False, **theirs,
            )
        snapshot = output.stdout.strip() if ok else ""
        if not snapshot:
            raise OperationError(f"the etcd snapshot on {source.name} failed (is k3s running there, with "
                                 f"k3s_cluster_init?): {output.stderr[-300:]}")
        with reaching(source, "copying the snapshot and cluster token") as theirs:
            ok, token = source.run_shell_command(
                StringCommand("cat", QuoteString(TOKEN)), print_output=False, print_input=False, **theirs
            )
            data = BytesIO()
            fetched = source.get_file(snapshot, data, print_output=False, print_input=False, **theirs)
        if not ok or not token.stdout.strip() or not fetched:
            raise OperationError(f"copying the snapshot and cluster token from {source.name} failed")
        ok, _ = host.run_shell_command(
            StringCommand("install -d -m 0700", SNAPSHOT_DIR, "&& install -m 0600 /dev/null", QuoteString(target)),
            **sudo,
        )
        if not ok or not host.put_file(BytesIO(data.getvalue()), target, print_output=False, **sudo):
            raise OperationError(f"writing {target} on {host.name} failed")
        put_secret(host, TOKEN, token.stdout.strip() + "\n", sudo)
        _log(host, f"{snapshot} of {source.name} ({len(data.getvalue())} bytes) is {target} here")

    yield FunctionCommand(fetch_snapshot, (), {})


@host_operation(is_idempotent=False)
def cluster_reset(snapshot: str):
    """
    Restore an etcd ``snapshot`` into this server's datastore before k3s starts (``k3s server --cluster-reset
    --cluster-reset-restore-path``, which reads ``config.yaml`` and its token, restores, and exits). Call it
    with ``_if=`` the snapshot's arrival (see ``moved_from``), with k3s stopped.

    + snapshot: the snapshot file on this host

    **Example:**

    .. code:: python

        k3s.cluster_reset(name="Restore", snapshot=k3s.moved_snapshot(old), _if=moved.did_change)
    """
    yield StringCommand(
        "systemctl stop k3s.service 2>/dev/null; out=$(k3s server --cluster-reset",
        QuoteString(f"--cluster-reset-restore-path={snapshot}"),
        "2>&1) || { printf '%s\\n' \"$out\" | tail -n 20 >&2; exit 1; }",
    )


@host_operation()
def retired(successor: Host, node_name: str, remove_data: bool = False):
    """
    Take k3s off the old server once ``successor`` runs its cluster (see ``moved_from``): checked first, over
    ``successor``'s connection; then k3s is removed here as ``uninstalled`` does, and this server's node object is
    deleted from the cluster. A host without k3s is left alone.

    + successor: the new first server
    + node_name: this server's node name in k3s
    + remove_data: also remove the old cluster's data here (without it, the old datastore stays for a way back)

    **Example:**

    .. code:: python

        k3s.retired(name="Retire the old server", successor=inventory.get_host("master2"), node_name="master")
    """
    if not _leftovers(host.get_fact(K3sFootprint), remove_data):
        host.noop("k3s is not installed" + (" and left no data" if remove_data else ""))
        return

    def successor_runs_the_cluster(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        ok, out = _kubectl(successor, "get nodes -o json")
        if not ok or not any(node["ready"] for node in parse_nodes(out) if node["name"] != node_name):
            raise OperationError(f"not retiring k3s on {host.name}: {successor.name} does not run the cluster "
                                 f"({out.strip()[-200:] or 'no Ready node'})")

    def forget_node(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        ok, out = _kubectl(successor, "delete node", QuoteString(node_name), "--ignore-not-found")
        if not ok:
            raise OperationError(f"deleting the node {node_name} on {successor.name} failed: {out[-300:]}")

    yield FunctionCommand(successor_runs_the_cluster, (), {})
    yield from _uninstall_commands(remove_data)
    yield FunctionCommand(forget_node, (), {})


def _kubectl(server: Host, *args: object) -> tuple[bool, str]:
    """``k3s kubectl`` on a server, as a cross-host step; its output, or its error output when it failed."""
    with reaching(server, "k3s kubectl") as sudo:
        ok, output = server.run_shell_command(StringCommand(KUBECTL, *args), print_output=False, **sudo)
    return ok, output.stdout if ok else output.stderr


def _copy_token(state: State, host: Host, source: Host, source_path: str, path: str, sudo: dict[str, Any],
                pending: str | None) -> None:  # pyinfra passes state and host by these names
    """The cluster token of ``source`` (a server) into ``path`` on this node."""
    token = run_on(source, StringCommand("cat", QuoteString(source_path)), f"reading {source_path}").strip()
    if not token:
        raise OperationError(f"reading {source_path} on {source.name} failed: it is empty")
    put_secret(host, path, token + "\n", sudo, pending)


@host_operation(changes=(InstalledRelease, FileStates))  # FileStates: its restart clears the pending mark
def binary(
    version: str,
    node_name: str,
    role: str,
    via: Host,
    url: str = "",
    checksum_url: str | None = None,
    sha256: str | None = None,
    drain_timeout: int = 300,
    ready_timeout: int = 300,
    machines: dict[str, dict[str, Any]] | None = None,
    pending: str | None = None,
):
    """
    Install the pinned k3s binary; on a node that runs another version, upgrade it one node at a time across
    the whole run: cordon and drain the node (through ``kubectl`` on ``via``), install the verified binary,
    restart k3s, wait until the node is Ready at the new version, uncordon it. Servers are upgraded first when
    their operation comes first (deploy k3s_server before k3s_agent).

    + version: the k3s version, e.g. ``v1.35.3+k3s1``
    + url, checksum_url, sha256, machines: the release binary and how to verify it (see ``release.installed``)
    + node_name: this node's name in k3s
    + role: ``server`` or ``agent`` (which unit to restart)
    + via: a server whose ``k3s kubectl`` drains, waits and uncordons (the first server)
    + drain_timeout, ready_timeout: seconds for the drain, and for the node to be Ready again
    + pending: k3s's marker of changes it has not taken up yet (see ``services.restarted``): the upgrade's restart
      takes them up (new airgap images installed before it), so it removes the marker

    **Example:**

    .. code:: python

        k3s.binary(name="k3s binary", version="v1.35.3+k3s1", url=url, checksum_url=sums,
                   node_name="t420", role="agent", via=master)
    """
    if role not in ROLES:
        raise OperationValueError(f"role: {role!r} (expected 'server' or 'agent')")
    release.check_arguments(url, {"": BINARY}, checksum_url, sha256, machines)
    current = shared_fact(host, InstalledRelease, component="k3s", paths=[BINARY])
    if current.get("version") == version:
        host.noop(f"k3s {version} is installed")
        return
    url, files_, checksum_url = release.for_machine("k3s", url, {"": BINARY}, checksum_url, machines)
    if not current:  # a new node: nothing runs yet, nothing to drain
        yield release.install_command("k3s", version, url, files_, checksum_url, sha256)
        return
    # Recorded as installed only once the node is Ready at the new version and uncordoned: a run that fails
    # half-way leaves the old version recorded, and the next run resumes the upgrade.
    install = release.install_command("k3s", version, url, files_, checksum_url, sha256, record=False)
    record = release.record_command("k3s", version, BINARY)
    sudo = escalation(host, use_current_op=True)
    unit = unit_name(role)
    old = current.get("version")

    def upgrade(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        with _upgrade_turn(state, node_name):
            _log(host, f"upgrading k3s {old} -> {version}: draining {node_name}")
            ok, out = _kubectl(via, "drain", QuoteString(node_name), "--ignore-daemonsets", "--delete-emptydir-data",
                               "--force", f"--timeout={drain_timeout}s")
            if not ok:
                raise OperationError(f"draining {node_name} through {via.name} failed: {out[-500:]}")
            ok, output = host.run_shell_command(install, **sudo)
            if not ok:
                raise OperationError(f"installing k3s {version} failed; {node_name} stays cordoned: "
                                     f"{output.stderr[-500:]}")
            # Bounded: k3s's units have no start timeout, and a node that cannot come back must not hang the run.
            restart = clearing(start_command("restart", unit, ready_timeout), pending)
            ok, output = host.run_shell_command(restart, **sudo)
            if not ok:
                raise OperationError(f"restarting {unit} failed; {node_name} stays cordoned: {output.stderr[-500:]}")
            _wait_ready(via, node_name, version, ready_timeout)
            ok, out = _kubectl(via, "uncordon", QuoteString(node_name))
            if not ok:
                raise OperationError(f"uncordoning {node_name} through {via.name} failed: {out[-500:]}")
            ok, output = host.run_shell_command(record, **sudo)
            if not ok:
                raise OperationError(f"recording k3s {version} failed: {output.stderr[-300:]}")
            _log(host, f"{node_name} is Ready at {version} and schedulable again")

    yield FunctionCommand(upgrade, (), {})


class _upgrade_turn:
    """One node upgrades at a time in a run (a lock kept on the run's state); once one node's upgrade has
    failed, no other node starts one in that run."""

    def __init__(self, state: Any, node_name: str) -> None:
        from gevent.lock import Semaphore

        self.node_name = node_name
        self.turn = run_store(state, "upgrade_turn", lambda: {"lock": Semaphore(1), "failed": None})

    def __enter__(self) -> None:
        self.turn["lock"].acquire()
        if self.turn["failed"]:
            self.turn["lock"].release()
            raise OperationError(f"not upgrading: the upgrade of {self.turn['failed']} failed in this run")

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if error is not None and not self.turn["failed"]:
            self.turn["failed"] = self.node_name
        self.turn["lock"].release()


def _log(host: Host, message: str) -> None:
    from pyinfra import logger

    logger.info(f"{host.print_prefix}{message}")


def _wait_ready(via: Host, node_name: str, version: str, timeout: int) -> None:
    """Wait until ``node_name`` reports Ready at ``version`` (the server it is read through may restart too)."""
    deadline = time.monotonic() + timeout
    seen = "no answer"
    while time.monotonic() < deadline:
        ok, out = _kubectl(via, "get nodes -o json")
        node = next((n for n in parse_nodes(out) if n["name"] == node_name), None) if ok else None
        if node is not None:
            seen = f"Ready={node['ready']} at {node['version']}"
            if node["ready"] and node["version"] == version:
                return
        gevent.sleep(1)
    raise OperationError(f"{node_name} was not Ready at {version} within {timeout}s ({seen}); it stays cordoned")

