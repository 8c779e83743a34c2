"""nginx on the entrance: its whole configuration, tested with ``nginx -t`` in place, reloaded on change."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO

from pyinfra import host
from pyinfra.api import Host, OperationError, OperationValueError, State, StringCommand, operation
from pyinfra.api.command import FunctionCommand

from ..facts.headscale import Headscale, parse_nodes
from . import files
from .util import escalation, shared_fact

NGINX_CONF = "/etc/nginx/nginx.conf"
TEST = "nginx -t -q"


def _addresses(nodes: list[dict], backends: list[str]) -> list[str] | None:
    """The tailnet IPv4 of each backend (by its tailnet name), or None while one of them has none."""
    by_name = {node["name"]: node.get("ipv4") for node in nodes}
    found = [by_name.get(name) for name in backends]
    return [a for a in found if a] if all(found) else None


@operation()
def entrance_config(
    render_config: Callable[[list[str]], str],
    backends: list[str],
    headscale_host: Host | None = None,
    address: str | None = None,
    path: str = NGINX_CONF,
):
    """
    Write nginx's configuration for the entrance. The new file is tested in place with ``nginx -t``; a failing
    one is put back and the previous config keeps serving. Reload nginx (never restart) when this changed.

    The backends' tailnet addresses come from headscale's own node list (it allocates them), so a node that
    re-joins in the same run is followed at once. When a backend has no address yet at planning time (a first
    run), the config is built at execution time, once it has.

    + render_config: builds the config text from the ingress addresses
    + backends: the tailnet names of the nodes that serve the cluster ingress (the k3s nodes)
    + headscale_host: the inventory host running headscale
    + address: instead of the nodes, the one address of the ingress (e.g. a MetalLB IP behind a subnet route)
    + path: nginx's main config file

    **Example:**

    .. code:: python

        nginx.entrance_config(
            name="Entrance config", render_config=render, backends=["master", "t420"], headscale_host=cloud,
        )
    """
    if address is not None:
        yield from files.content._inner(path=path, text=render_config([address]), test_in_place=TEST)
        return
    if not backends or headscale_host is None:
        raise OperationValueError("backends, headscale_host: expected the k3s nodes' tailnet names and headscale")
    addresses = _addresses(shared_fact(headscale_host, Headscale)["nodes"], backends)
    if addresses is not None:
        yield from files.content._inner(path=path, text=render_config(addresses), test_in_place=TEST)
        return

    sudo, server = escalation(host, use_current_op=True), headscale_host

    def write_when_joined(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        ok, output = server.run_shell_command("headscale nodes list -o json", print_output=False, **escalation(server))
        found = _addresses(parse_nodes(output.stdout) if ok else [], backends)
        if found is None:
            raise OperationError(f"not every backend of {backends} is in the tailnet: the entrance cannot point at it")
        staged = f"{path}.portable-k3s-new"
        if not host.put_file(StringIO(render_config(found)), staged, print_output=False, **sudo):
            raise OSError(f"writing {staged} failed")
        ok, output = host.run_shell_command(StringCommand(*files.swap_in(path, staged, TEST)), **sudo)
        if not ok:
            raise OperationError(output.stderr[-500:])

    yield FunctionCommand(write_when_joined, (), {})
