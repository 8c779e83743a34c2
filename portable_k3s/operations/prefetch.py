"""Read the facts a component's operations need in one remote command, before those operations run."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import Host, OperationValueError

from ..adapter import run_store
from .util import _frozen, host_operation, prefetch

Reads = list[tuple[Any, dict[str, Any]]]


def facts(reads: Reads, static: Reads | None = None, early: bool = False, **arguments: Any) -> Any:
    """
    Read these facts of the host in ONE remote command (see ``util.prefetch``); the operations that follow and
    ask for the same facts with the same arguments (through ``shared_fact``) then send no command of their own.
    Over a slow link every command is a round trip: a component's state is read in one. Changes nothing.

    + reads: ``[(FactClass, {argument: value}), …]``
    + static: facts that cannot change during a run (``shared_fact(…, static=True)``: the architecture, the
      firmware), read in the same command once per run
    + early: these facts may be read sooner, by the host's first ``prefetch.facts`` in this run, so the whole
      host's state comes in one command: no operation planned before this one changes them (an operation that
      changes a fact ``forget``s it, and it is read again). Facts that some other prefetch on the host reads
      with ``early=False`` (a state that operations on other hosts change, and that its operations rely on)
      are never read ahead.

    **Example:**

    .. code:: python

        prefetch.facts(
            name="Read the tailscale state",
            reads=[(Tailscale, {}), (ServiceStates, {"units": ("tailscaled.service",)})],
        )
    """
    return _read(reads=list(reads), static=list(static or []), index=_plan(reads, static, early), **arguments)


def host_state(**arguments: Any) -> Any:
    """
    Read the host's whole state in one command: every later ``early`` prefetch of the host (see ``facts``).
    Call it first in a deploy file: the hosts then read their state in the same operation, all at once, also
    those whose first component comes later in the file (pyinfra runs one operation on every host before the
    next). Changes nothing.

    **Example:**

    .. code:: python

        prefetch.host_state(name="Read the host's state in one command")
    """
    return facts(reads=[], early=True, **arguments)


def _plan(reads: Reads, static: Reads | None, early: bool) -> int:
    """Check ``facts``' arguments while planning and remember the call; its index among the host's calls."""
    for key, value in (("reads", reads), ("static", static or [])):
        if not all(isinstance(read, tuple) and len(read) == 2 and isinstance(read[1], dict) for read in value):
            raise OperationValueError(f"{key}: expected a list of (FactClass, {{argument: value}}) pairs")
    planned = _planned(host)
    planned.append({"reads": list(reads), "static": list(static or []), "early": early})
    return len(planned) - 1


def _facts_inner(reads: Reads, static: Reads | None = None, early: bool = False) -> Any:
    """``facts`` as pyinfra's ``_inner`` of an operation: planned and read in one go (for the operation tests)."""
    return _read._inner(reads=list(reads), static=list(static or []), index=_plan(reads, static, early))


facts._inner = _facts_inner  # type: ignore[attr-defined]


@host_operation()
def _read(reads: Reads, static: Reads, index: int):
    """The operation of ``facts``: this prefetch's facts, and the later ``early`` ones of the host."""
    later = _planned(host)[index + 1:]
    never = {_key(read) for entry in _planned(host) if not entry["early"] for read in entry["reads"] + entry["static"]}
    ahead = [read for entry in later if entry["early"] for read in entry["reads"] if _key(read) not in never]
    ahead_static = [read for entry in later if entry["early"] for read in entry["static"] if _key(read) not in never]
    count = prefetch(host, [*reads, *ahead], [*static, *ahead_static])
    total = len(reads) + len(static) + len(ahead) + len(ahead_static)
    note = f" (with {len(ahead) + len(ahead_static)} for later operations)" if ahead or ahead_static else ""
    host.noop(f"read {count} of {total} facts in one command{note}" if count else "nothing to read")
    return
    yield  # an operation is a generator; this one only reads


def _key(read: tuple[Any, dict[str, Any]]) -> tuple[str, Any]:
    return read[0].__name__, _frozen(read[1])


def _planned(on: Host) -> list[dict[str, Any]]:
    """The host's ``facts`` calls in planning order (kept with the host for the run)."""
    return run_store(on, "prefetches", list)
