"""Helpers for unit tests that run operations' execution-time callbacks against mocked connections."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pyinfra.api.command import FunctionCommand, StringCommand
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


def host_failure(commands: list[Any]) -> str:
    """The message of the one command an operation yields when it cannot go on at execution (see
    ``operations.util.host_operation``): it fails its host only, logging the message, instead of raising."""
    assert len(commands) == 1 and isinstance(commands[0], FunctionCommand), commands
    logged: list[str] = []
    failing = SimpleNamespace(log_styled=lambda message, **kwargs: logged.append(message))
    assert commands[0].function(None, failing, *commands[0].args) is False
    assert len(logged) == 1 and logged[0].startswith("Error: "), logged
    return logged[0].removeprefix("Error: ")
