"""Facts about time synchronisation, gathered in one remote command."""

from __future__ import annotations

from typing import TypedDict

from pyinfra.api import FactBase, StringCommand

from .util import CONTAINER, checksum, first_lines, next_section, sections, sha256_of, shared_value


class TimesyncdInfo(TypedDict):
    container: str | None
    config_sha256: str | None
    enabled: bool
    active: bool


class Timesyncd(FactBase[TimesyncdInfo]):
    """
    Returns the state of ``systemd-timesyncd``: the container type when the host is a container (its clock
    then belongs to the container host and timesyncd will not run), the checksum of our drop-in
    (``None`` when absent), and whether the unit is enabled and active.

    .. code:: python

        {"container": None, "config_sha256": "9a0e…", "enabled": True, "active": True}
    """

    shared_values = (CONTAINER,)  # systemd-detect-virt once per prefetch

    @staticmethod
    def default() -> TimesyncdInfo:  # no output at all: nothing there yet
        return {"container": None, "config_sha256": None, "enabled": False, "active": False}

    def command(self, path: str) -> StringCommand:
        return StringCommand(
            shared_value(CONTAINER),
            next_section(),
            sha256_of(path),
            next_section(),
            # One systemctl for both (ActiveState=…, UnitFileState=…, in systemd's order)
            "systemctl show -p UnitFileState -p ActiveState systemd-timesyncd.service 2>/dev/null || true",
        )

    def process(self, output: list[str]) -> TimesyncdInfo:
        container, sha = first_lines(output, 2)
        unit = dict(line.split("=", 1) for line in sections(output, 3)[2] if "=" in line)
        return {
            "container": None if container in ("", "none") else container,
            "config_sha256": checksum(sha),
            "enabled": unit.get("UnitFileState") == "enabled",
            "active": unit.get("ActiveState") == "active",
        }
