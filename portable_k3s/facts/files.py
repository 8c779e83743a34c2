"""Facts about managed files, for many files in one remote command."""

from __future__ import annotations

from typing import TypedDict

from pyinfra.api import FactBase, QuoteString, StringCommand


class FileState(TypedDict):
    sha256: str
    mode: str
    user: str
    group: str


class FileStates(FactBase[dict[str, FileState | None]]):
    """
    Returns the checksum, mode and owner of each path (None for a missing one), in one command. Operations
    that manage several files of a component pass the same ``paths`` tuple, so pyinfra asks only once.

    .. code:: python

        {"/etc/headscale/config.yaml": {"sha256": "9f…", "mode": "640", "user": "root", "group": "headscale"},
         "/etc/headscale/policy.hujson": None}
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    merge_by = "paths"  # several FileStates reads in one prefetch are one command (see operations.util.prefetch)

    @staticmethod
    def default() -> dict[str, FileState | None]:
        return {}

    @staticmethod
    def pick(states: dict[str, FileState | None], paths: tuple[str, ...]) -> dict[str, FileState | None]:
        """The part of a read of more paths that a read of ``paths`` alone gives."""
        return {path: state for path, state in states.items() if path in paths}

    def command(self, paths: tuple[str, ...]) -> StringCommand:
        # Two processes for all the paths (not a few per path): on a busy host every fork counts.
        quoted = [QuoteString(path) for path in paths]
        return StringCommand(
            "stat -c 'stat %a %U %G %n' --", *quoted, "2>/dev/null; sha256sum --", *quoted, "2>/dev/null; true"
        )

    def process(self, output: list[str]) -> dict[str, FileState | None]:
        owners: dict[str, tuple[str, str, str]] = {}
        sums: dict[str, str] = {}
        for line in output:
            if line.startswith("stat "):
                fields = line.split(" ", 4)
                if len(fields) == 5:
                    owners[fields[4]] = (fields[1], fields[2], fields[3])
            elif len(line) > 66 and line[64:66] in ("  ", " *"):
                sums[line[66:]] = line[:64]
        # A regular file has both; a missing path (or a directory, which sha256sum refuses) is None.
        states: dict[str, FileState | None] = {path: None for path in owners if path not in sums}
        for path, sha in sums.items():
            if path in owners:
                mode, user, group = owners[path]
                states[path] = {"sha256": sha, "mode": mode, "user": user, "group": group}
        return states
