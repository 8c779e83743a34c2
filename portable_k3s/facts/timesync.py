"""Facts about time synchronisation, gathered in one remote command."""

from __future__ import annotations

from typing import TypedDict

from pyinfra.api import FactBase, StringCommand

from .util import MANAGER, container_of, shared_value


class TimesyncdInfo(TypedDict):
    container: str | None


class Timesyncd(FactBase[TimesyncdInfo]):
    """
    Returns what ``systemd-timesyncd``'s configuration depends on: the container type when the host is a
    container (its clock then belongs to the container host and timesyncd will not run). The drop-in's checksum
    is ``files.FileStates``' and the unit's state ``services.ServiceStates``' (one ``sha256sum`` and one
    ``systemctl show`` with the other components' files and units).

    .. code:: python

        {"container": None}
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    shared_values = (MANAGER,)  # one systemctl show per prefetch, for the container type

    @staticmethod
    def default() -> TimesyncdInfo:  # no output at all: not a container
        return {"container": None}

    def command(self) -> StringCommand:
        return StringCommand(shared_value(MANAGER))

    def process(self, output: list[str]) -> TimesyncdInfo:
        return {"container": container_of(output)}
