"""Facts about release binaries installed by ``operations.release``."""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand

RELEASE_STATE_DIR = "/var/lib/portable-k3s/releases"


class InstalledRelease(FactBase[dict]):
    """
    Returns what ``release.installed`` recorded for a component, if all of its files are still there.

    .. code:: python

        {"version": "0.29.2", "sha256": "5f2a…"}   # or {} when absent or incomplete
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    @staticmethod
    def default() -> dict:
        return {}

    def command(self, component: str, paths: list[str]) -> StringCommand:
        checks: list[object] = []
        for path in paths:
            checks += ["[ -x", QuoteString(path), "] &&"]
        # The record's one line, read by the shell (no program run)
        return StringCommand(
            *checks, "{ v=; read -r v <", QuoteString(f"{RELEASE_STATE_DIR}/{component}"), '; echo "$v"; }',
            "2>/dev/null || true",
        )

    def process(self, output: list[str]) -> dict:
        fields = output[0].split() if output else []
        if len(fields) < 2:
            return {}
        return {"version": fields[0], "sha256": fields[1]}
