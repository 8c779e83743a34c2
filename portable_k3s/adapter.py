"""
The pyinfra boundary: every use of pyinfra's private objects, in one place.

The library's operations and deploys use pyinfra's public API (``@operation``, ``host.get_fact``,
``host.run_shell_command`` …). A few things need more: a per-run store on pyinfra's host and state objects (the
shared fact reads, the prefetch plan, the cross-host gates), whether pyinfra is executing or planning, the
operation's global arguments, the SSH connector's socket, and two planning speed-ups. They live here, and only for
the pyinfra versions this was written against (``SUPPORTED``, checked by ``supported()``). On another version each
falls back to the public API: shared reads become plain ``host.get_fact`` calls, prefetches read nothing ahead,
the SSH socket is left alone and the speed-ups stay off; the deploys work the same, with more round trips.

Importing the library changes nothing of pyinfra. The planning speed-ups (``speed_up_planning``) are asked for
explicitly, as the reference ``deploy.py`` does.

Planning speed-ups
------------------

In CLI mode pyinfra orders every operation it plans by the line numbers of the calls that led to it
(``pyinfra.api.util.get_operation_order_from_stack``). It gets them from ``inspect.stack()`` and
``inspect.getframeinfo()``, which for every frame also look up its module (a walk over ``sys.modules``) and read
its source line, twice per frame, for every operation on every host. It uses only each frame's file name and line
number, and the frame object has both. On the reference deploy that costs ~40 ms of CPU per host (about a fifth of
pyinfra's CPU in a no-op run). ``fast_operation_order()`` gives pyinfra's ``api.util`` a ``stack`` that walks the
frames with ``sys._getframe`` and a ``getframeinfo`` that reads the file and line from the frame: the same order,
no source read.

For every operation on every host (and every fact it reads), pyinfra's ``pop_global_arguments`` asks
``all_global_arguments()`` for the names and types of ``_sudo``, ``_if`` and the rest, and that evaluates the type
hints of ``AllArguments`` every time: about a quarter of pyinfra's planning CPU. ``global_arguments_once()`` reads
them once. Both would be worth proposing upstream.
"""

from __future__ import annotations

import functools
import inspect
import socket
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from types import FrameType
from typing import Any, NamedTuple, TypeVar

from pyinfra.api import Host, State

# The pyinfra versions whose private objects this module knows: (oldest, first unsupported), MAJOR.MINOR.
SUPPORTED = ((3, 10), (4, 0))
T = TypeVar("T")


def pyinfra_version() -> tuple[int, int]:
    """The installed pyinfra's MAJOR.MINOR, or (0, 0) when it cannot be told."""
    try:
        parts = version("pyinfra").split(".")
        return int(parts[0]), int(parts[1])
    except (PackageNotFoundError, ValueError, IndexError):
        return 0, 0


@functools.cache
def supported() -> bool:
    """Whether the installed pyinfra is one whose private objects this module uses (else: the public API only)."""
    return SUPPORTED[0] <= pyinfra_version() < SUPPORTED[1]


# Run state
#


def run_store(owner: Host | State | Any, name: str, factory: Callable[[], T]) -> T:
    """
    The library's value ``name`` kept on a pyinfra host or state object, made by ``factory`` on first use: it lives
    as long as the object, one run. (pyinfra has no place for a library's run data; an attribute of our own,
    ``_portable_k3s_<name>``, never one of pyinfra's.)
    """
    attribute = f"_portable_k3s_{name}"
    value = getattr(owner, attribute, None)  # getattr: ``pyinfra.host`` is a proxy of the current host
    if value is None:
        value = factory()
        setattr(owner, attribute, value)
    return value


def executing(state: Any) -> bool:
    """Whether pyinfra is running the operations (True) or planning them (False, and in ``--dry``)."""
    return bool(getattr(state, "is_executing", False))


def current_host() -> Host:
    """The host pyinfra is planning for now (``pyinfra.host`` is a proxy that follows the context; this is the host
    itself, for a callable that runs later)."""
    from pyinfra.context import ctx_host

    return ctx_host.get()


def operation_arguments(host: Host) -> dict[str, Any]:
    """The global arguments (``_sudo`` …) of the operation pyinfra is planning on ``host``, or {}."""
    return dict(getattr(host, "current_op_global_arguments", None) or {})


# The SSH connection
#


def ssh_socket(host: Host) -> socket.socket | None:
    """The TCP socket under ``host``'s SSH connection, or None (not SSH, not connected, a proxied connection, or a
    pyinfra this module does not know)."""
    if not supported():
        return None
    client = getattr(host.connector, "client", None)
    get_transport = getattr(client, "get_transport", None)
    if not callable(get_transport):
        return None
    sock = getattr(get_transport(), "sock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        return sock
    return None


def wrap_connector(host: Host, name: str, wrapper: Callable[[Any], Any]) -> bool:
    """Replace the methods ``run_shell_command``, ``put_file`` and ``get_file`` of ``host``'s connector object (that
    host's only) by ``wrapper(method)``, once per ``name``; returns whether they are wrapped."""
    if not supported():
        return False
    connector = host.connector
    marks: set[str] = run_store(connector, "wrapped", set)
    if name not in marks:
        for method_name in ("run_shell_command", "put_file", "get_file"):
            method = getattr(connector, method_name, None)
            if method is not None:
                setattr(connector, method_name, wrapper(method))
        marks.add(name)
    return True


# Planning speed-ups
#


class FramePlace(NamedTuple):
    """The two fields of ``inspect.FrameInfo`` that pyinfra's ordering and call locations read."""

    filename: str
    lineno: int


def frames(context: int = 1) -> list[tuple[FrameType]]:
    """``inspect.stack()`` for pyinfra: the caller's frame first, then the frames that called it, each one in
    a 1-tuple (pyinfra reads ``item[0]``); no module lookup, no source read."""
    found = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        found.append((frame,))
        frame = frame.f_back
    return found


def frame_place(frame: FrameType, context: int = 1) -> FramePlace:
    """``inspect.getframeinfo()`` for pyinfra: the frame's file and current line."""
    return FramePlace(frame.f_code.co_filename, frame.f_lineno)


def fast_operation_order() -> bool:
    """Make pyinfra work out the operation order from the frames themselves (see above). Returns whether it
    is in place."""
    from pyinfra.api import util

    if util.__dict__.get("stack") is frames:
        return True
    if not supported() or util.__dict__.get("stack") is not inspect.stack or \
            util.__dict__.get("getframeinfo") is not inspect.getframeinfo:
        return False  # another pyinfra: leave it as it is
    setattr(util, "stack", frames)  # noqa: B010 - drop-ins with narrower types than inspect's
    setattr(util, "getframeinfo", frame_place)  # noqa: B010
    return True


def global_arguments_once() -> bool:
    """Make pyinfra read the global arguments' names and types once (see above). Returns whether it is in place."""
    from pyinfra.api import arguments, facts

    original: Any = arguments.__dict__.get("all_global_arguments")
    if getattr(original, "__wrapped__", None) is not None:
        return True
    if not supported() or original is None or getattr(facts, "all_global_arguments", None) != original:
        return False  # another pyinfra: leave it as it is
    hints = tuple(original())

    @functools.wraps(original)
    def all_global_arguments() -> list[tuple[str, type]]:
        return list(hints)

    setattr(arguments, "all_global_arguments", all_global_arguments)  # noqa: B010 - the same signature
    setattr(facts, "all_global_arguments", all_global_arguments)  # noqa: B010
    return True


def speed_up_planning() -> bool:
    """
    Make pyinfra's planning cheaper for every operation of the run (see above): the operation order from the
    frames, the global arguments read once. Call it at the top of a deploy file; idempotent. Returns whether both
    are in place (False on a pyinfra this module does not know: nothing changed).

    .. code:: python

        from portable_k3s.adapter import speed_up_planning

        speed_up_planning()
    """
    return fast_operation_order() and global_arguments_once()
