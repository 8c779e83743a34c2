"""Helpers for operations that run commands at execution time (FunctionCommand callbacks)."""

from __future__ import annotations

from typing import Any

from pyinfra.api import Host

ESCALATION_ARGUMENTS = ("_sudo", "_sudo_user", "_use_sudo_login", "_su_user", "_doas", "_doas_user")


def escalation(host: Host, use_current_op: bool = False) -> dict[str, Any]:
    """The privilege escalation arguments (``_sudo`` …) to pass to ``host.run_shell_command``/``put_file``
    from a callback: those of the operation being planned on ``host``, else those set in ``host``'s data."""
    source: dict[str, Any] = {}
    if use_current_op and host.current_op_global_arguments:
        source = dict(host.current_op_global_arguments)
    else:
        source = {key: host.data.get(key) for key in ESCALATION_ARGUMENTS}
    return {key: source[key] for key in ESCALATION_ARGUMENTS if source.get(key)}
