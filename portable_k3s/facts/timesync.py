"""Facts about time synchronisation, gathered in one remote command."""

from __future__ import annotations

from typing import TypedDict

from pyinfra.api import FactBase, StringCommand

from .util import MANAGER, checksum, container_of, next_section, sections, sha256_of, shared_value


class TimesyncdInfo(TypedDict):
    container: str | None
    config_sha256: str | None


class Timesyncd(FactBase[TimesyncdInfo]):
    """
    Returns what ``systemd-timesyncd``'s configuration depends on: the container type when the host is a
    container (its clock then belongs to the container host and timesyncd will not run), and the checksum of
    our drop-in (``None`` when absent). The unit's state is ``services.ServiceStates``'s (one ``systemctl
    show`` with the other components' units).

    .. code:: python

        {"container": None, "config_sha256": "9a0e…"}
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    shared_values = (MANAGER,)  # one systemctl show per prefetch, for the container type

    @staticmethod
    def default() -> TimesyncdInfo:  # no output at all: nothing there yet
        return {"container": None, "config_sha256": None}

    def command(self, path: str) -> StringCommand:
        return StringCommand(
            sha256_of(path),
            next_section(),
            shared_value(MANAGER),
        )

    def process(self, output: list[str]) -> TimesyncdInfo:
        sha, manager = sections(output, 2)
        return {"container": container_of(manager), "config_sha256": checksum(sha[0] if sha else "")}
