"""What every lab module shares: its error, its log line and this machine's architecture."""

from __future__ import annotations

import os
import sys


class LabError(RuntimeError):
    """A lab step failed; the message says which and how."""


def log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def go_arch() -> str:
    """This machine's architecture as Go (and container image platforms) name it."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
