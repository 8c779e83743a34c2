"""
``python -m portable_k3s doctor INVENTORY``: walk the path a request takes, hop by hop, and say which one is broken.

The path: public DNS → the entrance listening → SNI routing on the entrance → headscale and each node's place in
the tailnet → tailnet from the entrance to each k3s node → the ingress on each node → k3s's view of its nodes; and
each backed-up app's newest snapshot (see portable_k3s.backups).
Every hop gives one line, failing ones first, each with the likely fix. A hop whose prerequisite failed is not
checked (and says which one), so the first cause stands out instead of everything behind it.

The checks run from where doctor runs (DNS, TCP and TLS, as the internet sees the entrance) and over SSH on the
entrances, the headscale host and the first k3s server, with the inventory's SSH settings.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from portable_k3s.backups import AppBackupState, BackupError, backed_up_apps, list_backups
from portable_k3s.config import ENTRANCE, ClusterConfig, HostConfig
from portable_k3s.facts.headscale import Headscale, HeadscaleInfo
from portable_k3s.facts.k3s import K3sNodes
from portable_k3s.manifests.backups import NAMESPACE as BACKUPS_NAMESPACE
from portable_k3s.settings.apps import kind_of

INGRESS_PORT = 443
# The backup hop's listing Job: a doctor run answers in minutes even when a node is down (its pod would wait).
BACKUP_LISTING_TIMEOUT = 120


@dataclass
class Hop:
    """One step of the path: ``ok`` True, False (broken), or None (not checked because ``after`` failed)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""
    after: str = ""

    def line(self) -> str:
        word = {True: "ok  ", False: "FAIL", None: "skip"}[self.ok]
        text = f"{word}  {self.name}: {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.fix and self.ok is False else text


class Probe(Protocol):
    """What doctor needs from the world (the real one is ``NetworkProbe``)."""

    def resolve(self, name: str) -> list[str]: ...

    def tcp(self, address: str, port: int) -> str | None: ...

    def tls(self, address: str, port: int, server_name: str) -> tuple[str | None, str | None]: ...

    def run(self, host: str, command: str, timeout: float | None = None) -> tuple[bool, str]: ...


@dataclass
class Path:
    """Collects hops; ``check`` skips a hop when one it comes after has failed."""

    hops: list[Hop] = field(default_factory=list)

    def failed(self, name: str) -> bool:
        return any(h.name == name and h.ok is False for h in self.hops)

    def add(self, name: str, after: Iterable[str], check: Any) -> Hop:
        blocked = next((a for a in after if self.failed(a)), None)
        if blocked:
            hop = Hop(name, None, f'not checked: "{blocked}" failed first', after=blocked)
        else:
            ok, detail, fix = check()
            hop = Hop(name, ok, detail, fix)
        self.hops.append(hop)
        return hop

    def report(self) -> list[Hop]:
        order = {False: 0, None: 1, True: 2}
        return sorted(self.hops, key=lambda h: order[h.ok])  # stable: path order within each kind


def diagnose(config: ClusterConfig, probe: Probe, resolved: dict[str, list[str]] | None = None) -> list[Hop]:
    """Check every hop of the path for this cluster; ``resolved`` overrides DNS for the names it has."""
    resolved = resolved or {}
    path = Path()
    entrances = config.hosts_in(ENTRANCE)
    headscale = config.hosts_in("headscale")
    servers = config.hosts_in("k3s_servers")
    nodes = [*servers, *config.hosts_in("k3s_agents")]
    public = sorted(app.hostname for app in config.public_apps() if app.hostname)
    # A raw TCP app's name has no certificate (no Ingress, nothing for cert-manager): its port is its path.
    https = [app.hostname for app in config.public_apps()
             if app.hostname and ((kind := kind_of(app)) is None or kind.http)]

    ssh_ok: dict[str, bool] = {}
    for host in {h.name: h for h in [*entrances, *headscale, *servers[:1]]}.values():
        hop = path.add(f"ssh {host.name}", [], lambda host=host: _ssh(probe, host))
        ssh_ok[host.name] = bool(hop.ok)

    # From the internet: DNS, the entrance's ports, SNI routing.
    addresses = {h.name: h.public_ipv4 for h in entrances}
    for name in public:
        path.add(f"dns {name}", [], lambda name=name: _dns(probe, name, addresses, resolved.get(name)))
    whitelists: dict[str, set[str] | None] = {}
    for entrance in entrances:
        address = entrance.public_ipv4
        path.add(f"entrance {entrance.name}", [], lambda address=address, e=entrance: _listening(probe, e, address))
        whitelists[entrance.name] = _whitelist(probe, entrance.name) if ssh_ok[entrance.name] else None
        path.add(f"whitelist {entrance.name}", [f"ssh {entrance.name}"],
                 lambda e=entrance: _exposed(e, whitelists[e.name], public))
        for name in sorted(https):
            path.add(f"sni {name} via {entrance.name}", [f"entrance {entrance.name}"],
                     lambda name=name, e=entrance: _sni(probe, e, name, whitelists[e.name]))

    # The tailnet: headscale's view, then the entrance's own view of each k3s node.
    listed: dict[str, dict[str, Any]] = {}
    for server in headscale:
        info = _headscale_info(probe, server.name) if ssh_ok[server.name] else Headscale.default()
        hop = path.add(f"headscale {server.name}", [f"ssh {server.name}"], lambda s=server, i=info: _headscale(s, i))
        if hop.ok:
            listed = {n["name"]: n for n in info["nodes"]}
    tailnet_hosts = {h.name: h for h in config.hosts.values() if h.groups & {ENTRANCE, "k3s_servers", "k3s_agents",
                                                                            "exit_nodes", "headscale"}}
    for host in tailnet_hosts.values():
        path.add(f"node {host.name}", [f"headscale {s.name}" for s in headscale], lambda h=host: _node(h, listed))
    for entrance in entrances:
        peers = _peers(probe, entrance.name) if ssh_ok[entrance.name] else {}
        for node in nodes:
            ip = peers.get(node.hostname) or (listed.get(node.hostname) or {}).get("ipv4")
            needs = [f"ssh {entrance.name}", f"node {node.name}"]
            tailnet = path.add(f"tailnet {entrance.name} -> {node.name}", needs,
                               lambda e=entrance, n=node, ip=ip: _ping(probe, e, n, ip))
            path.add(f"ingress {node.name} from {entrance.name}", [*needs, tailnet.name],
                     lambda e=entrance, n=node, ip=ip: _ingress(probe, e, n, ip))

    # k3s's own view of its nodes, from the first server.
    if servers:
        first = servers[0]
        ready = {n["name"]: n for n in _k3s_nodes(probe, first.name)} if ssh_ok[first.name] else {}
        for node in nodes:
            path.add(f"k3s {node.name}", [f"ssh {first.name}", f"node {node.name}"],
                     lambda n=node: _k3s(first, n, ready))
        # The apps' backups: each app's newest snapshot as new as its schedule allows.
        apps = backed_up_apps(config)
        if apps:
            states = _backups(probe, config) if ssh_ok[first.name] and ready else None
            for app in apps:
                path.add(f"backup {app.name}", [f"ssh {first.name}", f"k3s {first.name}"],
                         lambda app=app: _backup(app.name, states))
    return path.report()


# -- the hops --------------------------------------------------------------------------------------------------

Result = tuple[bool, str, str]


def _ssh(probe: Probe, host: HostConfig) -> Result:
    ok, out = probe.run(host.name, "true")
    if ok:
        return True, "connected", ""
    return False, f"cannot run a command over SSH: {out.strip()[-300:]}", (
        f"check {host.name}'s ssh_hostname, ssh_user and ssh_key in the inventory, and that it is powered on")


def _dns(probe: Probe, name: str, entrances: dict[str, str | None], given: list[str] | None) -> Result:
    wanted = {ip: host for host, ip in entrances.items() if ip}
    targets = ", ".join(f"{ip} ({host})" for ip, host in wanted.items()) or "an entrance's public_ipv4"
    fix = f"point the A record of {name} at {targets}"
    if given is not None:
        answers, how = given, "from --resolve, DNS not asked"
    else:
        try:
            answers, how = probe.resolve(name), "public DNS"
        except OSError as exc:
            return False, f"does not resolve ({exc})", fix
    if not wanted:
        return False, f"answers {answers} ({how}), but no entrance has a known public address", (
            "set public_ipv4 in the entrance hosts' data (or an IPv4 ssh_hostname)")
    strangers = [a for a in answers if a not in wanted]
    if strangers or not answers:
        return False, f"answers {answers or 'nothing'} ({how}), not an entrance", fix
    return True, f"{', '.join(f'{a} ({wanted[a]})' for a in answers)} ({how})", ""


def _listening(probe: Probe, entrance: HostConfig, address: str | None) -> Result:
    if not address:
        return False, "no public address known", "set public_ipv4 in its host data (or an IPv4 ssh_hostname)"
    errors = {port: error for port in (443, 80) if (error := probe.tcp(address, port))}
    if errors:
        shown = "; ".join(f"{address}:{port} {error}" for port, error in errors.items())
        return False, shown, (f"on {entrance.name}: systemctl status nginx (start it, or run the deploy); "
                              "check the cloud firewall lets 80 and 443 in")
    return True, f"{address}:443 and :80 accept connections", ""


def _whitelist(probe: Probe, entrance: str) -> set[str] | None:
    ok, out = probe.run(entrance, "nginx -T 2>/dev/null")
    if not ok or "map $ssl_preread_server_name" not in out:
        return None
    sni_map = out[out.index("map $ssl_preread_server_name"):]
    sni_map = sni_map[: sni_map.index("}")] if "}" in sni_map else sni_map
    return set(re.findall(r"^\s*(\S+)\s+cluster_https;", sni_map, re.MULTILINE))


def _exposed(entrance: HostConfig, listed: set[str] | None, public: Sequence[str]) -> Result:
    if listed is None:
        return False, "no SNI whitelist in nginx -T (the entrance deploy has not run, or nginx is missing)", (
            f"run the deploy for {entrance.name}")
    extra = sorted(listed - set(public))
    if extra:
        return False, f"lets in names that are not public apps: {', '.join(extra)}", (
            f"run the deploy for {entrance.name} (its nginx config was changed by hand)")
    return True, f"{len(listed)} names, all public apps", ""


def _sni(probe: Probe, entrance: HostConfig, name: str, listed: set[str] | None) -> Result:
    address = entrance.public_ipv4 or ""
    error, verify_error = probe.tls(address, INGRESS_PORT, name)
    if error:
        if listed is not None and name not in listed:
            return False, f"closed by the entrance: {name} is not in its SNI whitelist (nginx -T)", (
                f"run the deploy for {entrance.name} (its nginx config was changed by hand or is stale)")
        return False, f"TLS handshake failed: {error}", (
            "the entrance let it in, but no ingress answered: see the tailnet and ingress hops")
    if verify_error:
        return False, f"routed to the cluster, but its certificate is not valid: {verify_error}", (
            f"cert-manager on the cluster: kubectl describe certificate -A (is {name}'s DNS right for ACME?)")
    return True, "routed to the cluster; its certificate is valid", ""


def _headscale_info(probe: Probe, server: str) -> HeadscaleInfo:
    ok, out = probe.run(server, str(Headscale().command()))
    return Headscale().process(out.splitlines()) if ok else Headscale.default()


def _headscale(server: HostConfig, info: HeadscaleInfo) -> Result:
    if not info["running"]:
        return False, "headscale is not running or not answering", (
            f"on {server.name}: systemctl status headscale; journalctl -u headscale -n 50")
    online = sum(1 for n in info["nodes"] if n["online"])
    return True, f"running; {online} of {len(info['nodes'])} nodes online", ""


def _node(host: HostConfig, listed: dict[str, dict[str, Any]]) -> Result:
    node = listed.get(host.hostname)
    if node is None:
        return False, f"headscale does not know {host.hostname}", f"run the deploy for {host.name} (it joins it)"
    if not node["online"]:
        return False, f"headscale lists {host.hostname} ({node['ipv4']}) offline", (
            f"on {host.name}: systemctl status tailscaled; tailscale status (powered on? network up?)")
    return True, f"online as {node['ipv4']}", ""


def _peers(probe: Probe, entrance: str) -> dict[str, str]:
    """The entrance's own view of the tailnet: peer host name -> tailnet IPv4 (works while headscale is down)."""
    ok, out = probe.run(entrance, "tailscale status --json 2>/dev/null")
    try:
        status = json.loads(out) if ok else {}
    except ValueError:
        return {}
    peers = {}
    for peer in (status.get("Peer") or {}).values():
        ipv4 = next((ip for ip in peer.get("TailscaleIPs") or [] if ":" not in ip), None)
        if peer.get("HostName") and ipv4:
            peers[peer["HostName"]] = ipv4
    return peers


def _ping(probe: Probe, entrance: HostConfig, node: HostConfig, ip: str | None) -> Result:
    if not ip:
        return False, f"{entrance.name} does not see {node.hostname} in its tailnet", (
            f"on {entrance.name}: tailscale status; is {node.name} joined (run the deploy)?")
    ok, out = probe.run(entrance.name, f"tailscale ping -c 3 --timeout 3s {shlex.quote(ip)} 2>&1 | tail -n 1")
    if not ok or "pong from" not in out:
        return False, f"{ip} does not answer tailscale ping: {out.strip()[-200:]}", (
            f"on {node.name}: tailscale status; tailscale netcheck (UDP out blocked? no DERP?)")
    how = "relayed through DERP" if "via DERP" in out else "direct"
    return True, f"{ip} answers ({how})", ""


def _ingress(probe: Probe, entrance: HostConfig, node: HostConfig, ip: str | None) -> Result:
    command = f"timeout 5 bash -c {shlex.quote(f'exec 3<>/dev/tcp/{ip}/{INGRESS_PORT}')} 2>&1"
    ok, out = probe.run(entrance.name, command)
    if not ok:
        return False, f"{ip}:{INGRESS_PORT} does not accept a connection from {entrance.name}", (
            f"the ingress on {node.name}: kubectl -n kube-system get pods -l app.kubernetes.io/name=traefik -o wide"
            "; and the headscale policy (entrance -> k3s ingress ports)")
    return True, f"{ip}:{INGRESS_PORT} accepts connections from {entrance.name}", ""


def _k3s_nodes(probe: Probe, server: str) -> list[dict[str, Any]]:
    ok, out = probe.run(server, str(K3sNodes().command()))
    return [dict(node) for node in K3sNodes().process(out.splitlines())] if ok else []


def _k3s(server: HostConfig, node: HostConfig, ready: dict[str, dict[str, Any]]) -> Result:
    if not ready:
        return False, f"k3s on {server.name} does not answer kubectl get nodes", (
            f"on {server.name}: systemctl status k3s; journalctl -u k3s -n 50")
    found = ready.get(node.hostname)
    if found is None:
        return False, f"k3s has no node {node.hostname}", f"run the deploy for {node.name} (it joins the cluster)"
    if not found["ready"]:
        return False, f"{node.hostname} is NotReady", (
            f"on {node.name}: systemctl status k3s-agent k3s; journalctl -u k3s-agent -n 50")
    return True, f"Ready ({found.get('version') or 'unknown version'})", ""


def _backups(probe: Probe, config: ClusterConfig) -> dict[str, AppBackupState] | str:
    try:
        return {state.app: state for state in list_backups(config, probe.run, timeout=BACKUP_LISTING_TIMEOUT)}
    except BackupError as error:
        return str(error)


def _backup(app: str, listed: dict[str, AppBackupState] | str | None) -> Result:
    if not isinstance(listed, dict):
        return False, f"the backups could not be listed: {(listed or 'k3s not ready').splitlines()[0]}", (
            f"portable-k3s backups INVENTORY (its output says why); kubectl -n {BACKUPS_NAMESPACE} get pods")
    state = listed[app]
    if state.ok:
        return True, state.detail, ""
    return False, state.detail, (
        f"kubectl -n app-{app} get cronjob,jobs,pods -l app.kubernetes.io/component=backup; "
        f"kubectl -n app-{app} logs job/<the newest backup job> --all-containers")


# -- the real world --------------------------------------------------------------------------------------------


class NetworkProbe:
    """DNS, TCP and TLS from this machine; commands over SSH with the inventory's settings (pyinfra's connectors)."""

    def __init__(self, inventory: Any, timeout: float = 5.0, cafile: str | None = None) -> None:
        from pyinfra.api import Config, State

        self.inventory = inventory
        self.state = State(inventory, Config(CONNECT_TIMEOUT=int(timeout)))
        self.timeout = timeout
        self.cafile = cafile
        self.errors: dict[str, str] = {}

    def resolve(self, name: str) -> list[str]:
        infos = socket.getaddrinfo(name, INGRESS_PORT, socket.AF_INET, socket.SOCK_STREAM)
        return sorted({str(info[4][0]) for info in infos})

    def tcp(self, address: str, port: int) -> str | None:
        try:
            socket.create_connection((address, port), timeout=self.timeout).close()
        except OSError as exc:
            return str(exc) or type(exc).__name__
        return None

    def tls(self, address: str, port: int, server_name: str) -> tuple[str | None, str | None]:
        """(handshake error, certificate error): the handshake without verification, then with it."""
        plain = ssl.create_default_context()
        plain.check_hostname, plain.verify_mode = False, ssl.CERT_NONE
        try:
            self._handshake(plain, address, port, server_name)
        except (OSError, ssl.SSLError) as exc:
            return str(exc) or type(exc).__name__, None
        try:
            self._handshake(ssl.create_default_context(cafile=self.cafile), address, port, server_name)
        except ssl.SSLCertVerificationError as exc:
            return None, exc.verify_message or str(exc)
        except (OSError, ssl.SSLError) as exc:
            return None, str(exc)
        return None, None

    def _handshake(self, context: ssl.SSLContext, address: str, port: int, server_name: str) -> None:
        with socket.create_connection((address, port), timeout=self.timeout) as raw:
            with context.wrap_socket(raw, server_hostname=server_name):
                pass

    def run(self, host: str, command: str, timeout: float | None = None) -> tuple[bool, str]:
        """Run ``command`` on ``host`` over SSH, for at most ``timeout`` seconds (default: 6 times the probes')."""
        from pyinfra.api import StringCommand
        from pyinfra.api.exceptions import ConnectError

        if host in self.errors:
            return False, self.errors[host]
        target = self.inventory.get_host(host)
        try:
            target.connect(show_errors=False, raise_exceptions=True)
        except ConnectError as exc:
            self.errors[host] = str(exc)
            return False, str(exc)
        wrapped = f"timeout {int(timeout or self.timeout * 6)} sh -c {shlex.quote(command)}"
        ok, output = target.run_shell_command(StringCommand(wrapped), print_output=False, print_input=False)
        return ok, output.stdout if ok else output.output

    def close(self) -> None:
        for host in self.inventory:
            if host.connected:
                host.disconnect()


def print_report(hops: list[Hop]) -> int:
    """One line per hop, failing first; exit status 1 when any hop failed."""
    for hop in hops:
        print(hop.line())
    failed = sum(1 for h in hops if h.ok is False)
    skipped = sum(1 for h in hops if h.ok is None)
    print(f"doctor: {failed} failing, {skipped} not checked, {len(hops) - failed - skipped} ok")
    return 1 if failed else 0
