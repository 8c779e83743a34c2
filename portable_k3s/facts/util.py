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
# The systemd manager's properties: one ``systemctl show`` answers both whether the host is a container (for the
# watchdog, panic and timesyncd facts) and the watchdog it runs, where ``systemd-detect-virt`` and ``systemctl``
# were two programs (~4 ms each on a small host).
MANAGER = "PORTABLE_K3S_MANAGER"
SHARED_VALUES = {MANAGER: "systemctl show -p Virtualization -p RuntimeWatchdogUSec 2>/dev/null"}

# systemd's container ids (``systemd-detect-virt --list`` names the VMs first, then these). The manager's
# ``Virtualization`` is one of them in a container (systemd names any other container manager
# ``container-other``), a VM's id in a VM, and empty (not printed) on bare metal.
CONTAINER_IDS = frozenset({
    "systemd-nspawn", "lxc-libvirt", "lxc", "openvz", "docker", "podman", "rkt", "wsl", "proot", "pouch",
    "container-other",
})


def shared_value(name: str) -> str:
    """The shell fragment that prints the ``SHARED_VALUES`` answer ``name``: the variable when a prefetch has set
    it, else its command's output."""
    return f'echo "${{{name}-$({SHARED_VALUES[name]})}}";'


def manager_property(lines: list[str], name: str) -> str:
    """The value of the manager property ``name`` in ``systemctl show``'s ``Name=value`` lines ("" when absent)."""
    prefix = f"{name}="
    return next((line[len(prefix):].strip() for line in lines if line.startswith(prefix)), "")


def container_of(lines: list[str]) -> str | None:
    """The container id in the manager's properties (``MANAGER``), or None when the host is not a container."""
    virtualization = manager_property(lines, "Virtualization")
    return virtualization if virtualization in CONTAINER_IDS else None


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
