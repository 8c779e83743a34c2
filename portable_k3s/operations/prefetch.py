"""Read the facts a component's operations need in one remote command, before those operations run."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import OperationValueError, operation

from .util import prefetch


@operation()
def facts(reads: list[tuple[Any, dict[str, Any]]], static: list[tuple[Any, dict[str, Any]]] | None = None):
    """
    Read these facts of the host in ONE remote command (see ``util.prefetch``); the operations that follow and
    ask for the same facts with the same arguments (through ``shared_fact``) then send no command of their own.
    Over a slow link every command is a round trip: a component's state is read in one. Changes nothing.

    + reads: ``[(FactClass, {argument: value}), …]``
    + static: facts that cannot change during a run (``shared_fact(…, static=True)``: the architecture, the
      firmware), read in the same command once per run

    **Example:**

    .. code:: python

        prefetch.facts(
            name="Read the tailscale state",
            reads=[(Tailscale, {}), (ServiceStates, {"units": ("tailscaled.service",)})],
        )
    """
    static = list(static or [])
    for key, value in (("reads", reads), ("static", static)):
        if not all(isinstance(read, tuple) and len(read) == 2 and isinstance(read[1], dict) for read in value):
            raise OperationValueError(f"{key}: expected a list of (FactClass, {{argument: value}}) pairs")
    count = prefetch(host, list(reads), static)
    total = len(reads) + len(static)
    host.noop(f"read {count} of {total} facts in one command" if count else "nothing to read")
    return
    yield  # an operation is a generator; this one only reads
