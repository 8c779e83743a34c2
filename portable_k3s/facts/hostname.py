"""Facts about the host's name."""

from __future__ import annotations

from pyinfra.api import FactBase


class NodeName(FactBase[str]):
    """
    Returns the host's name as the kernel has it (what ``uname -n`` prints), read by the shell itself from
    ``/proc/sys/kernel/hostname``: no program run (``uname -n`` where there is no such file).

    .. code:: python

        "t420"
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    @staticmethod
    def default() -> str:
        return ""

    def command(self) -> str:
        return 'v=; read -r v 2>/dev/null </proc/sys/kernel/hostname; [ -n "$v" ] || v="$(uname -n)"; echo "$v"'

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""
