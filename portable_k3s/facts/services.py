"""systemd services: whether units are active and enabled, several units in one remote command."""

from __future__ import annotations

from typing import NotRequired, TypedDict

from pyinfra.api import FactBase, QuoteString, StringCommand


class ServiceState(TypedDict):
    active: bool  # ActiveState is "active" (running, or exited for a oneshot)
    enabled: str  # UnitFileState: enabled, disabled, static, masked, …; "" when there is no unit file
    since: NotRequired[int]  # when an active unit became active, µs of the kernel's monotonic clock


class ServiceStates(FactBase[dict[str, ServiceState]]):
    """
    The state of the given units (one ``systemctl show`` for all of them; ``list-unit-files`` would cost
    systemd a scan of every unit file).

    .. code:: python

        {"nginx.service": {"active": True, "enabled": "enabled", "since": 5234567}, "headscale.service": {...}}
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    merge_by = "units"  # several ServiceStates reads in one prefetch are one command (see operations.util.prefetch)

    @staticmethod
    def default() -> dict[str, ServiceState]:
        return {}

    @staticmethod
    def pick(states: dict[str, ServiceState], units: tuple[str, ...]) -> dict[str, ServiceState] | None:
        """The part of a read of more units that a read of ``units`` alone gives; None when a unit is not in it
        (``systemctl show`` names an alias by its unit's name)."""
        picked = {unit: states[unit] for unit in units if unit in states}
        return picked if len(picked) == len(set(units)) else None

    def command(self, units: tuple[str, ...]) -> StringCommand:
        return StringCommand(
            "systemctl show -p Id -p ActiveState -p UnitFileState -p ActiveEnterTimestampMonotonic --",
            *(QuoteString(u) for u in units),
            "2>/dev/null || true",
        )

    def process(self, output: list[str]) -> dict[str, ServiceState]:
        states: dict[str, ServiceState] = {}
        block: dict[str, str] = {}
        for line in [*output, ""]:
            key, _, value = line.strip().partition("=")
            if key:
                block[key] = value
                continue
            if block.get("Id"):
                state: ServiceState = {
                    "active": block.get("ActiveState") == "active",
                    "enabled": block.get("UnitFileState", ""),
                }
                since = block.get("ActiveEnterTimestampMonotonic", "")
                if state["active"] and since.isdigit() and int(since) > 0:
                    state["since"] = int(since)
                states[block["Id"]] = state
            block = {}
        return states
