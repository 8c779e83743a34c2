"""Cross-host steps (portable_k3s.operations.cross_host): another host's command as a step of an operation."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from pyinfra.api import OperationError
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState

from portable_k3s.facts.headscale import Headscale
from portable_k3s.operations import cross_host
from portable_k3s.operations.util import shared_fact
from tests.callbacks import named_host, output


def _other(state: FakeState) -> Any:
    other = named_host(state, "cloud", {"headscale.Headscale": {"running": True, "nodes": [], "users": {}}},
                       data={"_sudo": True})
    other.state.is_executing = True
    return other


def test_a_step_runs_quietly_with_the_other_hosts_own_escalation_and_forgets_what_it_changes() -> None:
    state = FakeState()
    other = _other(state)
    before = shared_fact(other, Headscale)
    other.run_shell_command = mock.Mock(return_value=(True, output("done")))
    assert cross_host.run_on(other, "headscale nodes tag", "re-tagging t420", forgets=(Headscale,)) == "done"
    (call,) = other.run_shell_command.call_args_list
    assert call.kwargs == {"print_output": False, "print_input": False, "_sudo": True}
    other.get_fact = mock.Mock(return_value={"running": True, "nodes": [{"id": 1}], "users": {}})
    assert shared_fact(other, Headscale) is not before  # read afresh


def test_a_failing_step_names_itself_the_host_and_its_stderr() -> None:
    other = _other(FakeState())
    other.run_shell_command = mock.Mock(return_value=(False, output(stderr="Error: node not found")))
    with pytest.raises(OperationError) as raised:
        cross_host.run_on(other, "headscale nodes delete", "deleting the stale registration 3 of t420")
    assert raised.value.args[0] == "deleting the stale registration 3 of t420 on cloud failed: Error: node not found"


def test_a_lost_connection_is_named_as_such_and_what_was_read_there_is_forgotten() -> None:
    state = FakeState()
    other = _other(state)
    shared_fact(other, Headscale)
    other.run_shell_command = mock.Mock(side_effect=EOFError())
    with pytest.raises(OperationError) as raised:
        cross_host.run_on(other, "true", "minting a key", forgets=(Headscale,), when_lost="; it joins next time")
    assert raised.value.args[0] == ("minting a key on cloud failed: the connection was lost (EOFError); it joins "
                                    "next time")
    other.get_fact = mock.Mock(return_value=None)
    assert shared_fact(other, Headscale) is None and other.get_fact.call_count == 1


def test_a_barrier_changes_nothing_and_says_what_it_orders() -> None:
    state = FakeState()
    node = named_host(state, "t420")
    with ctx_state.use(state), ctx_host.use(node):
        assert list(cross_host.barrier._inner(why="the servers' operations come before the agents'")) == []
    assert node.noop_description == "the servers' operations come before the agents'"
