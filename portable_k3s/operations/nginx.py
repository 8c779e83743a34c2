"""nginx on the entrance: its whole configuration, tested with ``nginx -t`` in place, reloaded on change."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO

from pyinfra import host
from pyinfra.api import Host, OperationError, OperationValueError, State, StringCommand, operation
from pyinfra.api.command import FunctionCommand

from ..facts.tailscale import Tailscale
from . import files
from .util import escalation

NGINX_CONF = "/etc/nginx/nginx.conf"
TEST = "nginx -t -q"


@operation()
def entrance_config(render_config: Callable[[list[str]], str], backends: list[Host], path: str = NGINX_CONF):
    """
    Write nginx's configuration for the entrance, built from the cluster nodes' tailnet IPv4 addresses. The new
    file is tested in place with ``nginx -t``; a failing one is put back and the previous config keeps serving.
    Reload nginx (never restart) when this operation changed something.

    The addresses come from each backend's tailscale fact. When a backend has not joined the tailnet yet at
    planning time (a first run), the config is built at execution time, once it has.

    + render_config: builds the config text from the backends' addresses (in ``backends`` order)
    + backends: the inventory hosts that serve the cluster ingress (the k3s nodes)
    + path: nginx's main config file

    **Example:**

    .. code:: python

        nginx.entrance_config(name="Entrance config", render_config=render, backends=k3s_hosts)
    """
    if not backends:
        raise OperationValueError("backends: empty (expected the k3s nodes that serve the ingress)")
    addresses = [backend.get_fact(Tailscale)["ipv4"] for backend in backends]
    if all(addresses):
        yield from files.content._inner(
            path=path, text=render_config([a for a in addresses if a]), test_in_place=TEST
        )
        return

    sudo = escalation(host, use_current_op=True)

    def write_when_joined(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        found = []
        for backend in backends:
            ok, output = backend.run_shell_command("tailscale ip -4", print_output=False, **escalation(backend))
            if not ok or not output.stdout.strip():
                raise OperationError(f"{backend.name} has no tailnet address: the entrance cannot point at it")
            found.append(output.stdout.strip().splitlines()[0])
        staged = f"{path}.portable-k3s-new"
        if not host.put_file(StringIO(render_config(found)), staged, print_output=False, **sudo):
            raise OSError(f"writing {staged} failed")
        ok, output = host.run_shell_command(StringCommand(*files.swap_in(path, staged, TEST)), **sudo)
        if not ok:
            raise OperationError(output.stderr[-500:])

    yield FunctionCommand(write_when_joined, (), {})
