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
from .headscale import mint_preauth_key
from .util import escalation, forget, gate, host_operation, shared_fact

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


@host_operation()
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
    known_keys = {node["node_key"] for node in server["nodes"]}
    flags = settings_flags(hostname, accept_dns, accept_routes, exit_node, routes, routes_by_k3s, snat)
    wanted = wanted_prefs(login_server, hostname, accept_dns, accept_routes, exit_node, routes, routes_by_k3s, snat)
    # "Starting": logged in, waiting for a relay or a peer (e.g. right after a reboot that also restarted
    # headscale): still this tailnet's node. A re-join would not help it and would cost it its node key.
    joined_here = info["backend_state"] in ("Running", "Starting") and info["prefs"].get("ControlURL") == login_server
    known = info["node_key"] in known_keys if server["running"] else True
    if joined_here and known:
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
        forget(host, Tailscale)
        if current != wanted:
            yield StringCommand("tailscale set", *flags)
        if retag and node is not None:
            node_id, wanted_tags = node["id"], ",".join(sorted(set(tags)))

            def set_tags(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
                command = StringCommand(
                    "headscale nodes tag --identifier", str(node_id), "--tags", QuoteString(wanted_tags)
                )
                with gate(headscale_host):
                    ok, output = headscale_host.run_shell_command(
                        command, print_output=False, **escalation(headscale_host)
                    )
                forget(headscale_host, Headscale)
                if not ok:
                    raise OSError(f"re-tagging {hostname} on {headscale_host.name} failed: {output.stderr[-300:]}")

            yield FunctionCommand(set_tags, (), {})
        return

    forget(host, Tailscale)
    sudo = escalation(host, use_current_op=True)
    # An earlier registration of this host that it can no longer use (its disk was replaced, or headscale was
    # restored from a backup): deleted first, or headscale would give the new one another name (h1-abc123).
    stale = [n["id"] for n in server["nodes"] if n["name"] == hostname and n["node_key"] != info["node_key"]
             and set(n["tags"]) & set(tags)]
    if stale:

        def delete_stale(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
            for node_id in stale:
                command = StringCommand("headscale nodes delete --force --identifier", str(node_id))
                with gate(headscale_host):
                    ok, output = headscale_host.run_shell_command(
                        command, print_output=False, **escalation(headscale_host)
                    )
                if not ok:
                    raise OSError(f"deleting the stale registration {node_id} of {hostname} on "
                                  f"{headscale_host.name} failed: {output.stderr[-300:]}")
            forget(headscale_host, Headscale)

        yield FunctionCommand(delete_stale, (), {})

    def upload_fresh_key(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        try:
            key = mint_preauth_key(headscale_host, tags)
            if not host.put_file(StringIO(key.unmask()), AUTHKEY_FILE, print_output=False, print_input=False,
                                 **sudo):
                raise OSError(f"uploading the pre-auth key to {host.name} failed")
        except Exception:  # no key file left behind (empty, or half written) for a join that did not happen
            with contextlib.suppress(Exception):
                host.run_shell_command(StringCommand("rm -f", QuoteString(AUTHKEY_FILE)), **sudo)
            raise

    yield StringCommand("install -d -m 0700", AUTHKEY_DIR, "&& install -m 0600 /dev/null", AUTHKEY_FILE)
    yield FunctionCommand(upload_fresh_key, (), {})
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

    def wait_until_listed(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        """headscale lists a new node a moment after it joined; later operations (the entrance) need it there."""
        ok, output = host.run_shell_command("tailscale status --json", print_output=False, **sudo)
        node_key = (json.loads(output.stdout or "{}").get("Self") or {}).get("PublicKey") if ok else None
        deadline = time.monotonic() + 30
        while node_key and time.monotonic() < deadline:
            with gate(headscale_host):
                ok, output = headscale_host.run_shell_command(
                    "headscale nodes list -o json", print_output=False, **escalation(headscale_host)
                )
            if ok and node_key in output.stdout:
                forget(headscale_host, Headscale)  # later operations read the node list with this node in it
                return
            gevent.sleep(0.5)
        raise OSError(f"{hostname} joined, but headscale on {headscale_host.name} does not list it")

    yield FunctionCommand(wait_until_listed, (), {})
