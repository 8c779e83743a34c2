"""portable_k3s.adapter's planning speed-ups: pyinfra's operation order from the frames themselves, the same as
pyinfra's own; asked for explicitly, never by an import."""

from __future__ import annotations

import inspect
import subprocess
import sys
from types import SimpleNamespace

import pyinfra
import pytest
from pyinfra.api import util

from portable_k3s import adapter as planning


@pytest.fixture(autouse=True)
def _sped_up() -> None:
    planning.speed_up_planning()


def test_importing_the_library_changes_nothing_of_pyinfra() -> None:
    code = ("import inspect, portable_k3s.operations, portable_k3s.deploys.k3s, portable_k3s.config; "
            "from pyinfra.api import util, arguments; "
            "print(util.stack is inspect.stack, util.getframeinfo is inspect.getframeinfo, "
            "not hasattr(arguments.all_global_arguments, '__wrapped__'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.split() == ["True", "True", "True"]


def test_speed_up_planning_puts_it_in_place_and_is_idempotent() -> None:
    assert planning.speed_up_planning() is True
    assert util.stack is planning.frames and util.getframeinfo is planning.frame_place
    assert planning.speed_up_planning() is True


def _fast_and_pyinfras(call, monkeypatch: pytest.MonkeyPatch) -> list:
    """``call()`` with this library's frame reading, then with pyinfra's own (from the same line)."""
    results = []
    for pyinfras in (False, True):
        with monkeypatch.context() as patch:
            if pyinfras:
                patch.setattr(util, "stack", inspect.stack)
                patch.setattr(util, "getframeinfo", inspect.getframeinfo)
            results.append(call())
    return results


def _both_orders(state: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    return _fast_and_pyinfras(lambda: util.get_operation_order_from_stack(state), monkeypatch)


def _nested(depth: int, state: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    if depth:
        return _nested(
            depth - 1,  # a call over several lines: the line pyinfra records is the same
            state,
            monkeypatch,
        )
    return _both_orders(state, monkeypatch)


@pytest.mark.parametrize("deploy_file", [__file__, None, "/nowhere/deploy.py"])
def test_same_order_as_pyinfra(deploy_file: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyinfra, "is_cli", True)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    fast, slow = _nested(3, state, monkeypatch)
    assert fast == slow
    assert fast[0] == 7  # the file number, then the call lines from the deploy file's frame on
    if deploy_file != "/nowhere/deploy.py":  # not on the stack: pyinfra keeps only the outermost frame
        assert len(fast) > 5


def test_same_call_location_as_pyinfra(monkeypatch: pytest.MonkeyPatch) -> None:
    """What pyinfra's error messages name ("line N in file") comes out the same."""
    fast, slow = _fast_and_pyinfras(lambda: util.get_call_location(frame_offset=0), monkeypatch)
    assert fast == slow
    assert fast.startswith("line ") and fast.endswith("test_planning.py"), fast


def test_leaves_another_pyinfra_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(util, "stack", lambda context=1: [])
    assert planning.fast_operation_order() is False
    assert util.getframeinfo is planning.frame_place  # left as it was


def test_global_arguments_are_read_once_and_the_same_as_pyinfras() -> None:
    from pyinfra.api import arguments, facts

    assert arguments.all_global_arguments is facts.all_global_arguments  # both of pyinfra's callers
    original = arguments.all_global_arguments.__wrapped__
    assert arguments.all_global_arguments() == original() and len(original()) > 10
    assert ("_sudo", bool) in arguments.all_global_arguments()
    arguments.all_global_arguments().clear()  # a caller changing its list changes nothing for the next one
    assert arguments.all_global_arguments() == original()
    assert planning.global_arguments_once() is True  # idempotent
