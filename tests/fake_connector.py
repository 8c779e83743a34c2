"""A pyinfra connector for unit tests: it runs nothing, records every command and upload, and answers
fact commands from canned output. Hosts are named ``@fake/NAME``; use the ``fake_connector`` fixture."""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import IOBase
from typing import Any

from pyinfra.api.command import StringCommand
from pyinfra.connectors.base import BaseConnector
from pyinfra.connectors.util import CommandOutput, OutputLine

from portable_k3s.operations.util import PREFETCH_MARK


class FakeConnector(BaseConnector):
    """Records commands per host in ``FakeConnector.log[host_name]``; ``FakeConnector.responses`` maps a
    regex (searched in the command) to the stdout it returns. Unmatched commands succeed with no output."""

    handles_execution = True
    log: dict[str, list[Any]] = {}
    responses: dict[str, str] = {}

    @staticmethod
    def make_names_data(name: str | None = None) -> Iterator[tuple[str, dict, list[str]]]:
        yield f"@fake/{name}", {}, []

    def run_shell_command(self, command: StringCommand, print_output: bool = False,
                          print_input: bool = False, **arguments: Any) -> tuple[bool, CommandOutput]:
        text = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
        FakeConnector.log.setdefault(self.host.name, []).append(text)
        if PREFETCH_MARK in text:  # one command for several facts: not emulated, so the facts are read one by one
            return False, CommandOutput([])
        for pattern, stdout in FakeConnector.responses.items():
            if re.search(pattern, text):
                lines = [OutputLine("stdout", line) for line in stdout.splitlines()]
                return True, CommandOutput(lines)
        return True, CommandOutput([])

    def put_file(self, filename_or_io: str | IOBase, remote_filename: str,
                 remote_temp_filename: str | None = None, print_output: bool = False,
                 print_input: bool = False, **arguments: Any) -> bool:
        FakeConnector.log.setdefault(self.host.name, []).append(("upload", remote_filename))
        return True

    def get_file(self, remote_filename: str, filename_or_io: str | IOBase,
                 remote_temp_filename: str | None = None, print_output: bool = False,
                 print_input: bool = False, **arguments: Any) -> bool:
        FakeConnector.log.setdefault(self.host.name, []).append(("download", remote_filename))
        return True

    @classmethod
    def reset(cls) -> None:
        cls.log = {}
        cls.responses = {}


def register(monkeypatch: Any) -> type[FakeConnector]:
    """Make ``@fake/NAME`` hosts resolvable by pyinfra's inventory for the duration of a test."""
    import pyinfra.api.inventory as inventory_mod

    original_all = inventory_mod.get_all_connectors
    original_exec = inventory_mod.get_execution_connectors
    monkeypatch.setattr(inventory_mod, "get_all_connectors", lambda: {**original_all(), "fake": FakeConnector})
    monkeypatch.setattr(
        inventory_mod, "get_execution_connectors", lambda: {**original_exec(), "fake": FakeConnector}
    )
    FakeConnector.reset()
    return FakeConnector
