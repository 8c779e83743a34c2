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


# At most this many commands at once on one host's SSH connection from cross-host callbacks and facts: OpenSSH
# refuses more than MaxSessions (10 by default) channels per connection.
CROSS_HOST_CONCURRENCY = 4


def _per_state(state: Any) -> dict[str, dict]:
    """This run's cross-host bookkeeping, kept on the pyinfra state itself (it ends with the run)."""
    store = getattr(state, "_portable_k3s_cross_host", None)
    if store is None:
        store = {"gates": {}, "once": {}}
        state._portable_k3s_cross_host = store
    return store


def gate(host: Host) -> Any:
    """A semaphore bounding the commands that several hosts' operations run on ``host`` at the same time."""
    from gevent.lock import BoundedSemaphore

    gates = _per_state(host.state)["gates"]
    if host.name not in gates:
        gates[host.name] = BoundedSemaphore(CROSS_HOST_CONCURRENCY)
    return gates[host.name]


def fact_once_per_operation(reader: Host, target: Host, fact: Any) -> Any:
    """``target.get_fact(fact)``, read once for all the hosts that run the same operation (``reader`` is the host
    running it) instead of once per host: one round trip on ``target`` where there would be one per node."""
    from gevent.lock import Semaphore

    if reader.current_op_hash is None:  # not inside a planned operation: nothing to share
        with gate(target):
            return target.get_fact(fact)
    # Planning (change detection) and execution each read it once: the execution sees what earlier ops did.
    executing = bool(getattr(target.state, "is_executing", False))
    key = (target.name, f"{reader.current_op_hash}:{fact.__name__}", executing)
    entry = _per_state(target.state)["once"].setdefault(key, {"lock": Semaphore(), "done": False, "value": None})
    with entry["lock"]:
        if not entry["done"]:
            with gate(target):
                entry["value"] = target.get_fact(fact)
            entry["done"] = True
    return entry["value"]
