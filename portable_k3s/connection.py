"""pyinfra's SSH sockets made fit for slow links and hosts that go away: no Nagle delay, a lost host noticed.

pyinfra's SSH connector (paramiko) leaves Nagle's algorithm on. Every remote command is a few small SSH
packets (open a channel, exec, EOF, close) written back to back; with Nagle on, the second small write waits for
the peer's delayed ACK, so each command on an already open connection costs ~40 ms more than it needs to. Over
a deploy that is dozens of commands per host, strictly one after another.

It also leaves the socket without TCP keepalive or a user timeout, so a host that loses power or its network in the
middle of a run (a laptop, a home connection) hangs its command until the kernel gives up retransmitting, about 15
minutes. With the options set here, such a host's connection fails after ``connection_lost_after`` seconds of
silence (host data, default :data:`LOST_AFTER`): pyinfra reports that host failed and carries on with the others.

``ssh_tcp_options()`` sets both on the live socket of every connected SSH host of the state and registers a state
callback that does the same for hosts that connect later (lazily, or again after a reconnect). Every deploy of this
library calls it first, so users of the deploys get it by default; users of the bare operations call it once at
the top of their deploy file::

    from portable_k3s.connection import ssh_tcp_options

    ssh_tcp_options()

A connection that ends under a command (the host shut down, or its silence ran out) is reported to pyinfra as the
``ConnectionAbortedError`` it is, not as paramiko's ``EOFError``: pyinfra then fails that host and carries on with
the others, where an ``EOFError`` ends its whole run.

It is idempotent and does nothing for connectors without a TCP socket (``@local``, ``@docker``, test
connectors) or for SSH connections that do not end in one (a ``ProxyCommand`` or a jump host's channel).
"""

from __future__ import annotations

import functools
import socket
from typing import Any

from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.api.state import BaseStateCallback
from pyinfra.context import ctx_state

# LOST_AFTER: seconds of silence after which a host's SSH connection is given up (the host lost its power or
# network): its command fails and pyinfra carries on with the other hosts. Host data ``connection_lost_after``
# overrides it.
from .adapter import run_store, ssh_socket, wrap_connector
from .settings.base import LOST_AFTER


def connection_socket(host: Host) -> socket.socket | None:
    """The TCP socket under ``host``'s connection, or None when its connector has none (not SSH, not connected,
    or a proxied SSH connection)."""
    return ssh_socket(host)


def lost_after_options(seconds: int) -> list[tuple[int, int, int]]:
    """``setsockopt`` arguments that end a connection whose peer stays silent for ``seconds``: keepalive probes
    from a third of it on an idle connection, and the same bound on unacknowledged data (TCP_USER_TIMEOUT)."""
    return [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(seconds // 3, 1)),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(seconds // 9, 1)),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6),
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, seconds * 1000),
    ]


def set_host_options(host: Host) -> bool:
    """Set TCP_NODELAY and the lost-host timeout (``connection_lost_after``) on ``host``'s connection socket;
    return whether there was one to set them on."""
    sock = connection_socket(host)
    if sock is None:
        return False
    data = getattr(host, "data", None)
    lost_after = (data.get("connection_lost_after") if data is not None else None) or LOST_AFTER
    try:
        for level, option, value in [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), *lost_after_options(lost_after)]:
            sock.setsockopt(level, option, value)
    except OSError as exc:  # a socket closed under us: the next connect gets the callback
        logger.debug("%s: could not set the SSH socket's TCP options: %s", host.name, exc)
        return False
    lost_connection_as_os_error(host)
    return True


def lost_connection_as_os_error(host: Host) -> None:
    """Make ``host``'s SSH connector report a connection that ended under it (paramiko's ``EOFError``) as the
    ``ConnectionAbortedError`` it is. pyinfra fails a host on an ``OSError`` from its connector and carries on with
    the others, but an ``EOFError`` ends its whole run, for every host. Only this host's connector object changes."""
    wrap_connector(host, "lost_as_os_error", lambda method: _eof_as_os_error(method, host.name))


def _eof_as_os_error(method: Any, name: str) -> Any:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except EOFError as exc:
            raise ConnectionAbortedError(f"the SSH connection to {name} ended") from exc

    return call


class SocketOptionsCallback(BaseStateCallback):
    """Sets the TCP options on each host's SSH socket as soon as the host connects."""

    @staticmethod
    def host_connect(state: State, host: Host) -> None:
        set_host_options(host)


def ssh_tcp_options(state: State | None = None) -> list[Host]:
    """
    Turn off Nagle's algorithm and end a connection whose host stays silent for ``connection_lost_after`` seconds
    (its host data, default :data:`LOST_AFTER`) on the SSH connections of ``state`` (default: the current pyinfra
    state), now for every connected host and from then on for every host that connects. Safe to call any number
    of times.

    + state: the pyinfra state (default: the one pyinfra is running)

    Returns the hosts whose socket they were set on by this call.
    """
    state = state if state is not None else ctx_state.get()
    if state is None:
        return []
    if not any(isinstance(handler, SocketOptionsCallback) for handler in state.callback_handlers):
        state.add_callback_handler(SocketOptionsCallback())
    hosts: Any = getattr(state, "inventory", None) or []
    done = []
    for host in hosts:
        # Every deploy calls this for every host it plans: each socket is set once, not once per call and host.
        sock = connection_socket(host) if host.connected else None
        done_on: dict[str, Any] = run_store(host, "tuned_socket", dict)
        if sock is not None and done_on.get("socket") is not sock and set_host_options(host):
            done_on["socket"] = sock
            done.append(host)
    return done
