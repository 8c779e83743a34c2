"""Helpers for facts that gather several answers in one remote command (one round trip, not several)."""

from __future__ import annotations

from pyinfra.api import QuoteString, StringCommand

SEPARATOR = "--portable-k3s--"


def next_section() -> str:
    """The shell fragment that separates two answers of a batched fact command (on a line of its own, also
    after output that does not end with a newline)."""
    return f"echo; echo {SEPARATOR};"


# Answers that several facts print, worked out once when they are read together: ``util.prefetch`` sets the
# variables its facts name in ``shared_values`` before their commands; a fact read alone runs the command itself.
CONTAINER = "PORTABLE_K3S_CONTAINER"
SHARED_VALUES = {CONTAINER: "systemd-detect-virt --container 2>/dev/null"}


def shared_value(name: str) -> str:
    """The shell fragment that prints the ``SHARED_VALUES`` answer ``name`` on a line: the variable when a
    prefetch has set it, else its command's output."""
    return f'echo "${{{name}-$({SHARED_VALUES[name]})}}";'


def sha256_of(path: str) -> StringCommand:
    """Print ``sha256sum``'s line for ``path`` (one program run: ``checksum`` takes the first word), or ``-`` when
    it does not exist."""
    return StringCommand("sha256sum", QuoteString(path), "2>/dev/null || echo -;")


def sections(output: list[str], count: int) -> list[list[str]]:
    """Split a batched fact's output into ``count`` lists of stripped lines (missing ones are empty)."""
    parts: list[list[str]] = [[]]
    for line in output:
        if line.strip() == SEPARATOR:
            parts.append([])
        elif line.strip() or parts[-1]:
            parts[-1].append(line.strip())
    return (parts + [[] for _ in range(count)])[:count]


def first_lines(output: list[str], count: int) -> list[str]:
    """The first line of each of ``count`` sections ("" for an empty one)."""
    return [part[0] if part else "" for part in sections(output, count)]


def checksum(value: str) -> str | None:
    """A ``sha256_of`` answer as a checksum, or None for a missing file."""
    digest = value.split(maxsplit=1)[0] if value.strip() else ""
    return None if digest in ("", "-") else digest
