"""
Cross-host steps: what an operation on one host does on another host, and the order between hosts.

Some operations need a second host while they run: a node's join mints its pre-auth key on headscale, re-tags the
node and deletes its stale registration there; a joining k3s node copies the first server's token; an upgrade
drains the node through a server's ``kubectl``; a server move fetches the old server's etcd snapshot; a new node
points the entrance's nginx at itself. Each such step goes through ``reaching`` (or ``run_on``, ``on_host`` built on
it), which:

+ runs over the other host's open SSH connection, at most ``util.CROSS_HOST_CONCURRENCY`` commands at once there
  (OpenSSH refuses more than MaxSessions channels per connection), with that host's own escalation arguments;
+ prints neither the command nor its output (pre-auth keys and tokens pass through);
+ names the step and the host when it fails (``<step> on <host> failed: <reason>``), a lost connection as such,
  as an ``OperationError``: the operation's own host fails, the run carries on (see ``util.host_operation``);
+ forgets the facts the step changes on the other host (``forgets``), so later operations read them afresh.

Order between hosts goes through ``barrier``: pyinfra runs each operation on every host before the next one, so
one operation called from one place for a set of hosts is a point every host reaches before any goes on (the
k3s servers before the agents; every k3s node before the old server of a move leaves).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from paramiko.ssh_exception import SSHException
from pyinfra import host
from pyinfra.api import Host, OperationError, State, StringCommand
from pyinfra.api.command import FunctionCommand

from .util import escalation, forget, gate, host_error, host_operation

LOST = (OSError, EOFError, SSHException)  # the other host's connection lost under a step


@contextmanager
def reaching(other: Host, step: str, forgets: tuple[Any, ...] = (), when_lost: str = "") -> Iterator[dict[str, Any]]:
    """
    A step on ``other``: inside, at most ``CROSS_HOST_CONCURRENCY`` at once there; yields ``other``'s escalation
    arguments for its ``run_shell_command``/``put_file``/``get_file``. A lost connection raises ``OperationError``
    ``"<step> on <other> failed: the connection was lost (…)<when_lost>"``; ``forgets`` are forgotten on ``other``
    afterwards, also when the step failed half-way.

    .. code:: python

        with reaching(source, "copying the etcd snapshot") as sudo:
            source.get_file(snapshot, data, print_output=False, **sudo)
    """
    try:
        with gate(other):
            yield escalation(other)
    except LOST as exc:
        raise OperationError(f"{step} on {other.name} failed: {host_error(exc)}{when_lost}") from exc
    finally:
        for fact in forgets:
            forget(other, fact)


def run_on(other: Host, command: StringCommand | str, step: str, forgets: tuple[Any, ...] = (),
           when_lost: str = "") -> str:
    """
    Run ``command`` on ``other`` as a step of this host's operation (see ``reaching``); return its output. A failing
    command raises ``OperationError`` ``"<step> on <other> failed: <the end of its stderr>"``.
    """
    with reaching(other, step, forgets, when_lost) as sudo:
        ok, output = other.run_shell_command(command, print_output=False, print_input=False, **sudo)
    if not ok:
        raise OperationError(f"{step} on {other.name} failed: {output.stderr[-500:]}")
    return output.stdout


def on_host(other: Host, command: StringCommand | str, step: str, forgets: tuple[Any, ...] = ()) -> FunctionCommand:
    """``run_on`` as a command of this host's operation, run when the operation runs."""
    return FunctionCommand(_run_step, (other, command, step, forgets), {})


def _run_step(state: State, host: Host, other: Host, command: StringCommand | str, step: str,
              forgets: tuple[Any, ...]) -> None:  # pyinfra passes state and host by these names
    run_on(other, command, step, forgets)


@host_operation()
def barrier(why: str):
    """
    Nothing on the host: an order between hosts. Called from one place for a set of hosts, it makes pyinfra run
    every operation those hosts planned before it on all of them before any of them runs what follows.

    + why: what comes before what, shown as the operation's outcome

    **Example:**

    .. code:: python

        cross_host.barrier(name="Servers before agents", why="the servers' operations come before the agents'")
    """
    host.noop(why)
    return
    yield  # an operation is a generator
