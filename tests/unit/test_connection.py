"""TCP_NODELAY and the lost-host timeout on the SSH socket: set where there is a TCP socket, a no-op for every other
connector."""

from __future__ import annotations

import ast
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy

from portable_k3s.connection import SocketOptionsCallback, connection_socket, set_host_options, ssh_tcp_options
from portable_k3s.deploys.base import base_host
from tests.fake_connector import FakeConnector
from tests.unit.test_deploys import _converged_responses

DEPLOYS = Path(__file__).resolve().parents[2] / "portable_k3s" / "deploys"


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.fixture
def tcp_pair() -> Iterator[socket.socket]:
    """A connected TCP socket over loopback (Nagle on, as a fresh socket has it)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        try:
            yield client
        finally:
            client.close()
            peer.close()


def _ssh_like_host(sock: Any) -> Any:
    """A host whose connector looks like pyinfra's SSH connector: ``client.get_transport().sock``."""
    transport = SimpleNamespace(sock=sock)
    return SimpleNamespace(name="h", connected=True,
                           connector=SimpleNamespace(client=SimpleNamespace(get_transport=lambda: transport)))


def _fake_state(hosts: list[str]) -> State:
    state = State(Inventory(([(f"@fake/{name}", {"hostname": name}) for name in hosts], {})), Config())
    connect_all(state)
    return state


def test_sets_nodelay_on_a_tcp_socket(tcp_pair: socket.socket) -> None:
    assert _nodelay(tcp_pair) == 0
    host = _ssh_like_host(tcp_pair)
    assert connection_socket(host) is tcp_pair
    assert set_host_options(host) is True
    assert _nodelay(tcp_pair) != 0
    assert set_host_options(host) is True  # idempotent
    assert _nodelay(tcp_pair) != 0


def test_a_silent_host_is_given_up_after_connection_lost_after(tcp_pair: socket.socket) -> None:
    """Keepalive probes from a third of the time on, and unacknowledged data bounded by it: 90 s by default, the
    host's ``connection_lost_after`` where it has one."""
    def option(level: int, name: int) -> int:
        return tcp_pair.getsockopt(level, name)

    host = _ssh_like_host(tcp_pair)
    assert set_host_options(host) is True
    assert option(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert option(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 90_000
    assert option(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    assert (option(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), option(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)) == (10, 6)
    host.data = {"connection_lost_after": 15}
    assert set_host_options(host) is True
    assert option(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 15_000
    assert option(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
    assert option(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1


def test_a_connection_that_ended_under_a_command_is_an_os_error_for_pyinfra(tcp_pair: socket.socket) -> None:
    """paramiko says EOFError, which ends pyinfra's whole run; as ConnectionAbortedError pyinfra fails the host."""
    def ended(*args: Any, **kwargs: Any) -> Any:
        raise EOFError

    host = _ssh_like_host(tcp_pair)
    host.connector.run_shell_command = ended
    host.connector.put_file = lambda *args, **kwargs: True
    assert set_host_options(host) and set_host_options(host)
    assert host.connector.run_shell_command.__wrapped__ is ended  # wrapped once, however often it is set
    with pytest.raises(ConnectionAbortedError, match="the SSH connection to h ended"):
        host.connector.run_shell_command("true")
    assert host.connector.put_file("a", "b") is True


def test_each_socket_is_set_once_however_often_the_deploys_ask(tcp_pair: socket.socket) -> None:
    """Every deploy calls ``ssh_tcp_options()`` while it is planned on every host: a socket it set already is left
    alone (one call per host and deploy would be quadratic in the number of hosts); a new one is set."""
    host = _ssh_like_host(tcp_pair)
    handlers: list[Any] = []
    state: Any = SimpleNamespace(inventory=[host], callback_handlers=handlers, add_callback_handler=handlers.append)
    assert ssh_tcp_options(state) == [host] and _nodelay(tcp_pair) != 0
    tcp_pair.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)  # (to see whether it is set again)
    assert ssh_tcp_options(state) == [] and _nodelay(tcp_pair) == 0
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as new:
        host.connector.client.get_transport().sock = new  # reconnected: a new socket
        assert ssh_tcp_options(state) == [host] and _nodelay(new) != 0
        server.accept()[0].close()


def test_no_socket_to_set_it_on() -> None:
    unix_a, unix_b = socket.socketpair()
    try:
        assert connection_socket(_ssh_like_host(unix_a)) is None  # e.g. a ProxyCommand's pipe
    finally:
        unix_a.close()
        unix_b.close()
    assert connection_socket(_ssh_like_host(object())) is None  # e.g. a jump host's channel
    disconnected = SimpleNamespace(name="h", connector=SimpleNamespace(client=None))
    assert set_host_options(disconnected) is False  # type: ignore[arg-type]
    assert set_host_options(SimpleNamespace(name="h", connector=object())) is False  # type: ignore[arg-type]


def test_fake_connector_is_left_alone(fake_connector: type[FakeConnector]) -> None:
    state = _fake_state(["node1", "node2"])
    assert all(host.connected for host in state.inventory)
    assert ssh_tcp_options(state) == []
    assert ssh_tcp_options(state) == []
    assert sum(isinstance(h, SocketOptionsCallback) for h in state.callback_handlers) == 1
    assert fake_connector.log == {}, "setting the option runs no remote command"


def test_a_deploy_registers_the_callback_once(fake_connector: type[FakeConnector]) -> None:
    fake_connector.responses.update(_converged_responses("node1"))
    state = _fake_state(["node1", "node2"])
    add_deploy(state, base_host)
    assert sum(isinstance(h, SocketOptionsCallback) for h in state.callback_handlers) == 1


def _deploy_functions() -> dict[str, ast.FunctionDef]:
    """Every @deploy function of the library, by ``file:name``."""
    found = {}
    for path in sorted(DEPLOYS.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "id", None) == "deploy" for d in node.decorator_list
            ):
                found[f"{path.name}:{node.name}"] = node
    return found


def test_the_deploys_are_all_found() -> None:
    assert {"base.py:base_host", "entrance.py:entrance", "headscale.py:headscale_server",
            "node_baseline.py:node_baseline", "tailscale.py:tailscale_node"} <= set(_deploy_functions())


# Each deploy starts by turning Nagle off, so its users get fast SSH without asking.
@pytest.mark.parametrize("name", sorted(_deploy_functions()))
def test_every_deploy_of_the_library_starts_with_it(name: str) -> None:
    func = _deploy_functions()[name]
    body = [n for n in func.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    first = body[0]
    assert (
        isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
        and getattr(first.value.func, "id", None) == "ssh_tcp_options"
    ), f"{name}: call ssh_tcp_options() first (see portable_k3s.connection)"


def test_hosts_connecting_later_get_it(tcp_pair: socket.socket) -> None:
    SocketOptionsCallback.host_connect(None, _ssh_like_host(tcp_pair))  # type: ignore[arg-type]
    assert _nodelay(tcp_pair) != 0


def test_without_a_state_it_does_nothing() -> None:
    assert ssh_tcp_options() == []
