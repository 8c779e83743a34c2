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

    @staticmethod
    def default() -> dict[str, FileState | None]:
        return {}

    def command(self, paths: tuple[str, ...]) -> StringCommand:
        bits: list[object] = ["for f in"]
        for path in paths:
            bits.append(QuoteString(path))
        bits.append(
            '; do if [ -f "$f" ]; then echo "$(stat -c \'%a %U %G\' "$f") $(sha256sum "$f" | cut -d\' \' -f1) $f";'
            ' else echo "- - - - $f"; fi; done'
        )
        return StringCommand(*bits)

    def process(self, output: list[str]) -> dict[str, FileState | None]:
        states: dict[str, FileState | None] = {}
        for line in output:
            fields = line.split(" ", 4)
            if len(fields) != 5:
                continue
            mode, user, group, sha, path = fields
            states[path] = None if sha == "-" else {"sha256": sha, "mode": mode, "user": user, "group": group}
        return states
