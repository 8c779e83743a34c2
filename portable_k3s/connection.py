"""Fast SSH connections: TCP_NODELAY on pyinfra's SSH sockets.

pyinfra's SSH connector (paramiko) leaves Nagle's algorithm on. Every remote command is a few small SSH
packets (open a channel, exec, EOF, close) written back to back; with Nagle on, the second small write waits for
the peer's delayed ACK, so each command on an already open connection costs ~40 ms more than it needs to. Over
a deploy that is dozens of commands per host, strictly one after another.

``tcp_nodelay()`` turns Nagle off on the live socket of every connected SSH host of the state and registers a
state callback that does the same for hosts that connect later (lazily, or again after a reconnect). Every
deploy of this library calls it first, so users of the deploys get it by default; users of the bare operations
call it once at the top of their deploy file::

    from portable_k3s.connection import tcp_nodelay

    tcp_nodelay()

It is idempotent and does nothing for connectors without a TCP socket (``@local``, ``@docker``, test
connectors) or for SSH connections that do not end in one (a ``ProxyCommand`` or a jump host's channel).
"""

from __future__ import annotations

import socket
from typing import Any

from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.api.state import BaseStateCallback
from pyinfra.context import ctx_state


def connection_socket(host: Host) -> socket.socket | None:
    """The TCP socket under ``host``'s connection, or None when its connector has none (not SSH, not connected,
    or a proxied SSH connection)."""
    client = getattr(host.connector, "client", None)
    get_transport = getattr(client, "get_transport", None)
    if not callable(get_transport):
        return None
    sock = getattr(get_transport(), "sock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        return sock
    return None


def set_host_nodelay(host: Host) -> bool:
    """Set TCP_NODELAY on ``host``'s connection socket; return whether there was one to set it on."""
    sock = connection_socket(host)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # a socket closed under us: the next connect gets the callback
        logger.debug("%s: could not set TCP_NODELAY: %s", host.name, exc)
        return False
    return True


class NoDelayCallback(BaseStateCallback):
    """Sets TCP_NODELAY on each host's SSH socket as soon as the host connects."""

    @staticmethod
    def host_connect(state: State, host: Host) -> None:
        set_host_nodelay(host)


def tcp_nodelay(state: State | None = None) -> list[Host]:
    """
    Turn off Nagle's algorithm on the SSH connections of ``state`` (default: the current pyinfra state), now
    for every connected host and from then on for every host that connects. Safe to call any number of times.

    + state: the pyinfra state (default: the one pyinfra is running)

    Returns the hosts whose socket it was set on by this call.
    """
    state = state if state is not None else ctx_state.get()
    if state is None:
        return []
    if not any(isinstance(handler, NoDelayCallback) for handler in state.callback_handlers):
        state.add_callback_handler(NoDelayCallback())
    hosts: Any = getattr(state, "inventory", None) or []
    done = []
    for host in hosts:
        # Every deploy calls this for every host it plans: each socket is set once, not once per call and host.
        sock = connection_socket(host) if host.connected else None
        if sock is not None and getattr(host, "_portable_k3s_nodelay", None) is not sock and set_host_nodelay(host):
            host._portable_k3s_nodelay = sock
            done.append(host)
    return done
