"""``operations.util.host_operation``: an error while an operation works out its commands during the run fails its
host only (pyinfra would end the run for every host); while planning, and for bad arguments, it still raises."""

from __future__ import annotations

from typing import Any

import pytest
from pyinfra.api import OperationError, OperationValueError, StringCommand
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from portable_k3s.facts.files import FileStates
from portable_k3s.operations.util import host_operation, shared_fact
from tests.callbacks import host_failure


@host_operation()
def _reads_then_writes(error: BaseException | None = None):
    """Read from the host (raising ``error``), then write."""
    if error is not None:
        raise error
    yield StringCommand("true")


def _commands(executing: bool, **kwargs: Any) -> list[Any]:
    state = FakeState()
    state.is_executing = executing
    with ctx_state.use(state), ctx_host.use(create_host(state, facts={})):
        return list(_reads_then_writes._inner(**kwargs))


@pytest.mark.parametrize(("error", "message"), [
    (EOFError(), "the connection was lost (EOFError)"),
    (TimeoutError(110, "Connection timed out"), "the connection was lost (TimeoutError: [Errno 110] Connection "
                                                "timed out)"),
    (OperationError("master has no tailnet IPv4"), "master has no tailnet IPv4"),
])
def test_an_error_during_the_run_fails_the_host_with_its_message(error: BaseException, message: str) -> None:
    assert host_failure(_commands(True, error=error)) == message


def test_argument_errors_and_errors_while_planning_still_raise() -> None:
    with pytest.raises(OperationValueError):
        _commands(True, error=OperationValueError("role: 'x'"))
    with pytest.raises(OperationError):
        _commands(False, error=OperationError("master has no tailnet IPv4"))


def test_without_an_error_the_commands_are_unchanged() -> None:
    assert [c.get_raw_value() for c in _commands(True)] == ["true"]


@host_operation(changes=(FileStates,))
def _writes_when_told(write: bool):
    """Changes a file when told to: declares that it changes FileStates."""
    if write:
        yield StringCommand("touch /etc/x")


@pytest.mark.parametrize("write", [True, False])
def test_declared_changes_are_forgotten_when_the_operation_yields_commands(write: bool) -> None:
    """An operation that changes a fact's subject declares it; its shared read is forgotten only when the
    operation yields a command (one that changes nothing forgets nothing)."""
    state = FakeState()
    host = create_host(state, facts={"files.FileStates": {"paths=('/etc/x',)": {"/etc/x": None}}})
    with ctx_state.use(state), ctx_host.use(host):
        before = shared_fact(host, FileStates, paths=("/etc/x",))
        assert len(list(_writes_when_told._inner(write=write))) == int(write)
        host.fact = type(host.fact)({"files.FileStates": {"paths=('/etc/x',)": {"/etc/x": {"sha256": "new"}}}})
        after = shared_fact(host, FileStates, paths=("/etc/x",))
    assert (after is before) is not write


def test_the_operations_that_always_act_are_marked_as_pyinfra_marks_them() -> None:
    from portable_k3s.operations import k3s, services

    for operation in (services.restarted, services.reloaded, services.restarted_if_running, k3s.cluster_reset):
        assert operation.is_idempotent is False, operation.__name__
    assert services.running.is_idempotent is True
