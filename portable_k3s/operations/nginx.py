"""nginx on the entrance: its whole configuration, tested with ``nginx -t`` in place, reloaded on change."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from io import StringIO

from pyinfra import host
from pyinfra.api import Host, OperationError, OperationValueError, State, StringCommand
from pyinfra.api.command import FunctionCommand

from ..facts.files import FileStates
from ..facts.headscale import Headscale, parse_nodes
from ..render import sha256
from . import files
from .cross_host import reaching, run_on
from .util import escalation, host_operation, shared_fact

NGINX_CONF = "/etc/nginx/nginx.conf"
TEST = "nginx -t -q"


def _addresses(nodes: list[dict], backends: list[str]) -> list[str] | None:
    """The tailnet IPv4 of each backend (by its tailnet name), or None while one of them has none."""
    by_name = {node["name"]: node.get("ipv4") for node in nodes}
    found = [by_name.get(name) for name in backends]
    return [a for a in found if a] if all(found) else None


def _put_tested(target: Host, path: str, text: str, sudo: dict, *then: object, pending: str | None = None) -> None:
    """Write ``text`` to ``path`` on ``target`` at execution: staged, moved in (``pending`` marked first), tested
    with ``nginx -t`` in place (a failing config is put back), then the ``then`` shell words."""
    staged = f"{path}.portable-k3s-new"
    if not target.put_file(StringIO(text), staged, print_output=False, **sudo):
        raise OSError(f"writing {staged} on {target.name} failed")
    words = [*files.marked(pending), *files.swap_in(path, staged, TEST), *then]
    ok, output = target.run_shell_command(StringCommand(*words), **sudo)
    if not ok:
        raise OperationError(f"{target.name}: {output.stderr[-500:]}")


@host_operation()
def entrance_config(
    render_config: Callable[[list[str]], str],
    backends: list[str],
    headscale_host: Host | None = None,
    address: str | None = None,
    path: str = NGINX_CONF,
    pending: str | None = None,
    batch: tuple[str, ...] | None = None,
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
    + pending: a marker made before the new config goes into place, for nginx to be reloaded even if this run stops
      first (``services.pending_marker("nginx.service", "reload")``; see ``services.reloaded``)
    + batch: the paths whose states are read in one remote command (see ``files.content``)

    **Example:**

    .. code:: python

        nginx.entrance_config(
            name="Entrance config", render_config=render, backends=["master", "t420"], headscale_host=cloud,
        )
    """
    write = partial(files.content._inner, path=path, test_in_place=TEST, pending=pending, batch=batch)
    if address is not None:
        yield from write(text=render_config([address]))
        return
    if not backends or headscale_host is None:
        raise OperationValueError("backends, headscale_host: expected the k3s nodes' tailnet names and headscale")
    addresses = _addresses(shared_fact(headscale_host, Headscale)["nodes"], backends)
    if addresses is not None:
        yield from write(text=render_config(addresses))
        return

    sudo, server = escalation(host, use_current_op=True), headscale_host

    def write_when_joined(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        listed = run_on(server, "headscale nodes list -o json", "listing the tailnet's nodes")
        found = _addresses(parse_nodes(listed), backends)
        if found is None:
            raise OperationError(f"not every backend of {backends} is in the tailnet: the entrance cannot point at it")
        _put_tested(host, path, render_config(found), sudo, pending=pending)

    yield FunctionCommand(write_when_joined, (), {})


@host_operation()
def entrance_followed(
    entrance: Host,
    render_config: Callable[[list[str]], str],
    backends: list[str],
    headscale_host: Host,
    path: str = NGINX_CONF,
):
    """
    Run on a k3s node deployed on its own (``--limit NODE``): point an entrance that is not part of this run at the
    k3s nodes, this one included, with the very config the entrance's own deploy would write. The new config is
    tested in place with ``nginx -t`` (a failing one is put back) and nginx is reloaded. Nothing happens when the
    entrance's config already is that one.

    + entrance: the entrance host (reached over its own connection)
    + render_config: builds the entrance's config from the ingress addresses (see ``deploys.entrance``)
    + backends: the tailnet names of the k3s nodes
    + headscale_host: the inventory host running headscale (it knows the nodes' tailnet addresses)
    + path: nginx's main config file on the entrance

    **Example:**

    .. code:: python

        nginx.entrance_followed(
            name="Point the entrance at this node", entrance=cloud, render_config=render,
            backends=["master", "t420", "new-node"], headscale_host=cloud,
        )
    """
    if not backends or headscale_host is None or entrance is None:
        raise OperationValueError("entrance, backends, headscale_host: expected the entrance, the k3s nodes' "
                                  "tailnet names and headscale")
    addresses = _addresses(shared_fact(headscale_host, Headscale)["nodes"], backends)
    if addresses is None:
        raise OperationError(f"not every backend of {backends} is in the tailnet: {entrance.name} cannot point at it")
    text = render_config(addresses)
    current = shared_fact(entrance, FileStates, paths=(path,)).get(path)
    if current is not None and current["sha256"] == sha256(text):
        host.noop(f"the nginx of {entrance.name} already points at every k3s node")
        return
    def write(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        with reaching(entrance, "pointing the entrance's nginx at this node", forgets=(FileStates,)) as sudo:
            _put_tested(entrance, path, text, sudo, "&& systemctl reload nginx.service")

    yield FunctionCommand(write, (), {})
