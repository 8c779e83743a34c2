"""Read the facts a component's operations need in one remote command, before those operations run."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import OperationValueError, operation

from .util import prefetch


@operation()
def facts(reads: list[tuple[Any, dict[str, Any]]]):
    """
    Read these facts of the host in ONE remote command (see ``util.prefetch``); the operations that follow and
    ask for the same facts with the same arguments (through ``shared_fact``) then send no command of their own.
    Over a slow link every command is a round trip: a component's state is read in one. Changes nothing.

    + reads: ``[(FactClass, {argument: value}), …]``

    **Example:**

    .. code:: python

        prefetch.facts(
            name="Read the tailscale state",
            reads=[(Tailscale, {}), (ServiceStates, {"units": ("tailscaled.service",)})],
        )
    """
    if not all(isinstance(read, tuple) and len(read) == 2 and isinstance(read[1], dict) for read in reads):
        raise OperationValueError("reads: expected a list of (FactClass, {argument: value}) pairs")
    count = prefetch(host, list(reads))
    host.noop(f"read {count} of {len(reads)} facts in one command" if count else "nothing to read")
    return
    yield  # an operation is a generator; this one only reads
