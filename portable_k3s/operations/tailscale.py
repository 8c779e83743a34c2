"""Operations for the tailscale client: install it, and join (or re-join) the headscale tailnet."""

from __future__ import annotations

import contextlib
import json
import time
from io import StringIO
from typing import Any

import gevent
from pyinfra import host
from pyinfra.api import Host, OperationError, OperationValueError, QuoteString, State, StringCommand
from pyinfra.api.command import FunctionCommand

from ..facts.headscale import Headscale
from ..facts.tailscale import Tailscale
from .cross_host import on_host, run_on
from .headscale import mint_preauth_key
from .util import escalation, forget, host_operation, shared_fact

AUTHKEY_DIR = "/run/portable-k3s"
AUTHKEY_FILE = f"{AUTHKEY_DIR}/tailscale-authkey"


def wanted_prefs(
    login_server: str, hostname: str, accept_dns: bool, accept_routes: bool, exit_node: bool, routes: list[str],
    routes_by_k3s: bool = False, snat: bool = True,
) -> dict[str, Any]:
    """The ``tailscale debug prefs`` values a node joined with these settings has (without the route ones when
    k3s manages them)."""
    advertised = sorted(routes + (["0.0.0.0/0", "::/0"] if exit_node else []))
    prefs = {"ControlURL": login_server, "Hostname": hostname, "CorpDNS": accept_dns, "NoSNAT": not snat}
    if not routes_by_k3s:
        prefs.update({"RouteAll": accept_routes, "AdvertiseRoutes": advertised})
    return prefs


def settings_flags(hostname: str, accept_dns: bool, accept_routes: bool, exit_node: bool,
                    routes: list[str], routes_by_k3s: bool = False, snat: bool = True) -> list[str]:
    flags = [f"--hostname={hostname}", f"--accept-dns={str(accept_dns).lower()}",
             f"--snat-subnet-routes={str(snat).lower()}"]
    if not routes_by_k3s:
        flags += [
            f"--accept-routes={str(accept_routes).lower()}",
            f"--advertise-exit-node={str(exit_node).lower()}",
            f"--advertise-routes={','.join(routes)}",
        ]
    return flags


@host_operation(changes=(Tailscale,))
def joined(
    login_server: str,
    headscale_host: Host,
    tags: list[str],
    hostname: str,
    accept_dns: bool = True,
    accept_routes: bool = False,
    exit_node: bool = False,
    routes: list[str] | None = None,
    routes_by_k3s: bool = False,
    snat: bool = True,
):
    """
    Join this node to the headscale tailnet, or bring it back in line.

    A joined node with the wanted settings is left alone; changed settings are applied with ``tailscale set``
    (no re-join); a node that is not logged in, or that the headscale server no longer knows, (re-)joins with a
    fresh pre-auth key. The key is minted on the headscale host only when needed, at execution time: single use,
    short-lived, tagged; it reaches this node as a 0600 file in a root-only directory, is passed as
    ``--auth-key=file:…`` (never in argv) and is deleted right after use. Tagged keys set the node's tags.

    + login_server: the headscale URL
    + headscale_host: the inventory host running headscale
    + tags: the node's tags (``tag:NAME``)
    + hostname: the node's name in the tailnet
    + accept_dns: use MagicDNS
    + accept_routes: accept subnet routes advertised by other nodes
    + exit_node: offer this node as an exit node
    + routes: subnets this node advertises
    + routes_by_k3s: leave accept-routes and the advertised routes to k3s (its "native" tailnet mode advertises
      the node's pod subnet itself); ``accept_routes``, ``exit_node`` and ``routes`` are then not applied
    + snat: tailscaled's default, masquerading what it forwards from the tailnet (``--snat-subnet-routes``); False
      keeps the tailnet source address, as a k3s node needs: a connection the entrance forwards to a pod's host port
      must reach Traefik from the entrance's address, the one Traefik takes the PROXY protocol from

    **Example:**

    .. code:: python

        tailscale.joined(
            name="Join the tailnet", login_server="https://headscale.example.org",
            headscale_host=inventory.get_host("cloud"), tags=["tag:k3s"], hostname="t420",
        )
    """
    routes = list(routes or [])
    if not tags or not all(t.startswith("tag:") for t in tags):
        raise OperationValueError(f"tags: {tags!r} (expected at least one tag:NAME)")
    info = shared_fact(host, Tailscale)  # later operations (k3s's config) read the same answer
    server = shared_fact(headscale_host, Headscale)  # one read for all the joining nodes
    if server is None:  # its host failed as it was read (pyinfra said why)
        raise OperationError(f"headscale's node list could not be read on {headscale_host.name}: this node joins at "
                             f"the next run once {headscale_host.name} answers")
    flags = settings_flags(hostname, accept_dns, accept_routes, exit_node, routes, routes_by_k3s, snat)
    wanted = wanted_prefs(login_server, hostname, accept_dns, accept_routes, exit_node, routes, routes_by_k3s, snat)
    # "Starting": logged in, waiting for a relay or a peer (e.g. right after a reboot that also restarted
    # headscale): still this tailnet's node. A re-join would not help it and would cost it its node key.
    joined_here = info["backend_state"] in ("Running", "Starting") and info["prefs"].get("ControlURL") == login_server
    known = info["node_key"] in {node["node_key"] for node in server["nodes"]} if server["running"] else True
    if joined_here and known:
        yield from _in_line(info, server, wanted, flags, headscale_host, hostname, tags)
    else:
        yield from _join(login_server, info, server, flags, headscale_host, hostname, tags)


def _in_line(info: dict[str, Any], server: dict[str, Any], wanted: dict[str, Any], flags: list[str],
             headscale_host: Host, hostname: str, tags: list[str]):
    """A node in the tailnet: its changed settings with ``tailscale set``, its changed tags on headscale."""
    current = {key: info["prefs"].get(key) for key in wanted}
    if "AdvertiseRoutes" in wanted:
        current["AdvertiseRoutes"] = sorted(current["AdvertiseRoutes"] or [])
    node = next((n for n in server["nodes"] if n["node_key"] == info["node_key"]), None)
    retag = node is not None and node["tags"] != sorted(set(tags))
    if current == wanted and not retag:
        if info["backend_state"] == "Running":
            host.noop(f"{hostname} is in the tailnet as {info['ipv4']}")
        else:
            host.noop(f"{hostname} is in the tailnet ({info['backend_state']}: waiting for a relay or a peer)")
        return
    if current != wanted:
        yield StringCommand("tailscale set", *flags)
    if retag and node is not None:
        command = StringCommand("headscale nodes tag --identifier", str(node["id"]), "--tags",
                                QuoteString(",".join(sorted(set(tags)))))
        yield on_host(headscale_host, command, f"re-tagging {hostname}", forgets=(Headscale,))


def _join(login_server: str, info: dict[str, Any], server: dict[str, Any], flags: list[str], headscale_host: Host,
          hostname: str, tags: list[str]):
    """A node not in the tailnet (or not the one headscale knows): (re-)join it with a fresh pre-auth key."""
    sudo = escalation(host, use_current_op=True)
    # An earlier registration of this host that it can no longer use (its disk was replaced, or headscale was
    # restored from a backup): deleted first, or headscale would give the new one another name (h1-abc123).
    stale = [n["id"] for n in server["nodes"] if n["name"] == hostname and n["node_key"] != info["node_key"]
             and set(n["tags"]) & set(tags)]
    if stale:
        deletes = [StringCommand("headscale nodes delete --force --identifier", str(node_id)) for node_id in stale]
        yield on_host(headscale_host, StringCommand(*_joined_by_and(deletes)),
                      f"deleting the stale registration {', '.join(map(str, stale))} of {hostname}",
                      forgets=(Headscale,))
    yield StringCommand("install -d -m 0700", AUTHKEY_DIR, "&& install -m 0600 /dev/null", AUTHKEY_FILE)
    yield FunctionCommand(_upload_fresh_key, (headscale_host, tags, sudo), {})
    yield StringCommand(
        "tailscale up --reset", f"--login-server={login_server}", f"--auth-key=file:{AUTHKEY_FILE}",
        "--timeout=60s", *flags, "; rc=$?; rm -f", QuoteString(AUTHKEY_FILE), "; exit $rc",
    )
    if info["backend_state"] in ("Running", "Starting"):
        # A node that was online under a registration headscale no longer has (deleted, or another server):
        # headscale may keep the DERP home and endpoints it reported over the old session from the new node,
        # and peers then have no path to it. A restart reports them afresh, with the new node key.
        yield StringCommand(
            "systemctl restart tailscaled.service && for i in $(seq 120); do tailscale status --json 2>/dev/null",
            "| grep -qE", QuoteString('"BackendState": "(Running|Starting)"'), "&& exit 0; sleep 0.5; done;",
            "echo 'tailscaled did not come back after its restart' >&2; exit 1",
        )
    yield FunctionCommand(_wait_until_listed, (headscale_host, hostname, sudo), {})


def _joined_by_and(commands: list[StringCommand]) -> list[Any]:
    words: list[Any] = []
    for command in commands:
        words += ["&&", command] if words else [command]
    return words


def _upload_fresh_key(state: State, host: Host, headscale_host: Host, tags: list[str], sudo: dict[str, Any]) -> None:
    """Mint a pre-auth key on headscale and put it into the node's key file; no key file is left behind (empty, or
    half written) for a join that does not happen."""
    try:
        key = mint_preauth_key(headscale_host, tags)
        if not host.put_file(StringIO(key.unmask()), AUTHKEY_FILE, print_output=False, print_input=False, **sudo):
            raise OSError(f"uploading the pre-auth key to {host.name} failed")
    except Exception:
        with contextlib.suppress(Exception):
            host.run_shell_command(StringCommand("rm -f", QuoteString(AUTHKEY_FILE)), **sudo)
        raise


def _wait_until_listed(state: State, host: Host, headscale_host: Host, hostname: str, sudo: dict[str, Any]) -> None:
    """headscale lists a new node a moment after it joined; later operations (the entrance) need it there."""
    ok, output = host.run_shell_command("tailscale status --json", print_output=False, **sudo)
    node_key = (json.loads(output.stdout or "{}").get("Self") or {}).get("PublicKey") if ok else None
    deadline = time.monotonic() + 30
    while node_key and time.monotonic() < deadline:
        listed = run_on(headscale_host, "headscale nodes list -o json", f"listing the nodes for {hostname}")
        if node_key in listed:
            forget(headscale_host, Headscale)  # later operations read the node list with this node in it
            return
        gevent.sleep(0.5)
    raise OSError(f"{hostname} joined, but headscale on {headscale_host.name} does not list it")
