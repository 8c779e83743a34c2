"""Helpers for unit tests that run operations' execution-time callbacks against mocked connections."""

from __future__ import annotations

from typing import Any

from pyinfra.api.command import StringCommand
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra_testing.util import FakeState, create_host


def named_host(state: FakeState, name: str, facts: dict | None = None, data: dict | None = None) -> Any:
    """A pyinfra-testing host with these facts, named ``name`` (create_host names it after its last fact)."""
    host = create_host(state, facts=facts, data=data)
    host.name = name
    return host


def output(stdout: str = "", stderr: str = "") -> CommandOutput:
    """What a mocked ``run_shell_command`` returns as its output."""
    lines = [OutputLine("stdout", line) for line in stdout.splitlines()]
    lines += [OutputLine("stderr", line) for line in stderr.splitlines()]
    return CommandOutput(lines)


def raw(command: Any) -> str:
    """A command as the shell would get it."""
    return command.get_raw_value() if isinstance(command, StringCommand) else str(command)
