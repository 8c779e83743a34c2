"""Helpers for operations that run commands at execution time (FunctionCommand callbacks)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from paramiko.ssh_exception import SSHException
from pyinfra import host as current_host
from pyinfra import logger
from pyinfra.api import Host, OperationError, OperationValueError, State, operation
from pyinfra.api.command import FunctionCommand

from ..adapter import executing, operation_arguments, run_store, supported
from ..facts.util import SHARED_VALUES

# Errors that concern one host during a run: an operation that cannot go on there, or the host's connection lost.
HOST_ERRORS = (OperationError, OSError, EOFError, SSHException)

ESCALATION_ARGUMENTS = ("_sudo", "_sudo_user", "_use_sudo_login", "_su_user", "_doas", "_doas_user")


def escalation(host: Host, use_current_op: bool = False) -> dict[str, Any]:
    """The privilege escalation arguments (``_sudo`` …) to pass to ``host.run_shell_command``/``put_file``
    from a callback: those of the operation being planned on ``host``, else those set in ``host``'s data."""
    source: dict[str, Any] = operation_arguments(host) if use_current_op else {}
    if not source:
        source = {key: host.data.get(key) for key in ESCALATION_ARGUMENTS}
    return {key: source[key] for key in ESCALATION_ARGUMENTS if source.get(key)}


# At most this many commands at once on one host's SSH connection from cross-host callbacks and facts: OpenSSH
# refuses more than MaxSessions (10 by default) channels per connection.
CROSS_HOST_CONCURRENCY = 4


def gate(host: Host) -> Any:
    """A semaphore bounding the commands that several hosts' operations run on ``host`` at the same time."""
    from gevent.lock import BoundedSemaphore

    gates: dict[str, Any] = run_store(host.state, "gates", dict)
    if host.name not in gates:
        gates[host.name] = BoundedSemaphore(CROSS_HOST_CONCURRENCY)
    return gates[host.name]


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((key, _frozen(item)) for key, item in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_frozen(item) for item in value)
    return value


def shared_fact(host: Host, fact: Any, static: bool = False, **kwargs: Any) -> Any:
    """
    ``host.get_fact(fact, **kwargs)``, read once per run phase (planning, execution) for all the operations that
    ask for it with the same arguments, on ``host`` or on other hosts (headscale's node list for every joining
    node): pyinfra itself reads a fact again on every call.

    An operation that changes what the fact reports declares it (``host_operation(changes=(Fact,))``): its read is
    forgotten when the operation yields commands, so the next operation reads it afresh (operations are generated
    just before they execute). Batched facts such as
    ``FileStates`` are shared safely as long as each path belongs to one operation. ``static=True``: the fact
    cannot change during a run (the machine's architecture, its firmware), read once for both phases.
    """
    from gevent.lock import Semaphore

    if not supported():  # a pyinfra whose objects the adapter does not know: pyinfra's own read, every time
        return host.get_fact(fact, **kwargs)
    phase = None if static else executing(host.state)
    key = (fact.__name__, _frozen(kwargs), phase)
    shared = _shared_reads(host)
    entry = shared.get(key)
    if entry is None:
        entry = shared[key] = {"lock": Semaphore(), "read": False, "value": None}
    with entry["lock"]:  # other hosts' operations may ask for it at the same moment (cross-host reads)
        if not entry["read"]:
            with gate(host):
                entry["value"] = host.get_fact(fact, **kwargs)
            entry["read"] = True
            _first_reads(host).setdefault(key, entry["value"])
    return entry["value"]


def run_start_fact(host: Host, fact: Any, **kwargs: Any) -> Any:
    """
    ``shared_fact``, as it was first read in this phase of the run: before this run's own operations changed it
    (their ``forget`` makes ``shared_fact`` read it again, this keeps the first answer). For what a run left behind,
    such as a pending mark: read at run time from the host's prefetch, not confused with this run's own changes.
    """
    if not supported():
        return host.get_fact(fact, **kwargs)
    key = (fact.__name__, _frozen(kwargs), executing(host.state))
    first = _first_reads(host)
    return first[key] if key in first else shared_fact(host, fact, **kwargs)


def file_checksum(host: Host, path: str) -> str | None:
    """The sha256 of the file ``path`` on ``host`` (None when it is absent): ``FileStates`` of that one path, which a
    prefetch reads with all the other files' in one ``sha256sum``. An operation that changes the file declares
    ``changes=(FileStates,)``."""
    from ..facts.files import FileStates

    state = shared_fact(host, FileStates, paths=(path,)).get(path)
    return state["sha256"] if state else None


PREFETCH_MARK = "#portable-k3s-prefetch#"


def prefetch(
    host: Host, reads: list[tuple[Any, dict[str, Any]]], static: list[tuple[Any, dict[str, Any]]] | None = None
) -> int:
    """
    Read several facts of ``host`` in ONE remote command into the ``shared_fact`` store, so the operations that
    ask for them next (with the same arguments) need no command of their own. Each fact's command runs in a
    subshell of its own, after its ``requires_command`` check; a fact whose command is missing or fails is left
    out, and its operation reads it the usual way (with pyinfra's own handling of that case); a fact with
    ``needs_subshell = False`` runs without a subshell. Nothing runs twice: a read asked for twice is one; reads
    of a fact with a ``merge_by`` argument (``FileStates``, ``ServiceStates``) are one command for all their
    items; an answer several facts print is worked out once (``facts.util.SHARED_VALUES``). Returns how many
    facts were read.

    + reads: ``[(FactClass, {argument: value}), …]``, the facts and arguments the operations will ask for
    + static: the same, for facts the operations read with ``shared_fact(…, static=True)`` (read once per run)
    """
    from gevent.lock import Semaphore
    from pyinfra.api import StringCommand

    if not supported():  # no shared store: the operations read their facts themselves
        return 0
    phase = executing(host.state)
    shared = _shared_reads(host)
    keyed: list[tuple[Any, dict[str, Any], tuple[Any, Any, bool | None]]] = [
        (fact, kwargs, (fact.__name__, _frozen(kwargs), phase)) for fact, kwargs in reads
    ]
    keyed += [(fact, kwargs, (fact.__name__, _frozen(kwargs), None)) for fact, kwargs in static or []]
    wanted: list[tuple[Any, dict[str, Any], tuple[Any, Any, bool | None]]] = []
    seen: set[tuple[Any, Any, bool | None]] = set()
    for fact, kwargs, key in keyed:  # a fact asked for twice (two components need it) is read once
        if key not in seen and not (shared.get(key) or {}).get("read"):
            seen.add(key)
            wanted.append((fact(), kwargs, key))
    if not wanted:
        return 0
    # Facts that take a list of items (FileStates' paths, ServiceStates' units: their ``merge_by`` argument) are
    # read once for all the items asked for; each read keeps its own items' part (the fact's ``pick``).
    commands: list[tuple[Any, dict[str, Any], list[tuple[tuple[Any, Any, bool | None], Any]]]] = []
    groups: dict[tuple[Any, Any], int] = {}
    for instance, kwargs, key in wanted:
        by = getattr(instance, "merge_by", None)
        if by is None or not isinstance(kwargs.get(by), list | tuple):
            commands.append((instance, kwargs, [(key, None)]))
            continue
        group = (type(instance), _frozen({name: value for name, value in kwargs.items() if name != by}))
        if group not in groups:
            groups[group] = len(commands)
            commands.append((instance, {**kwargs, by: ()}, []))
        _, merged, members = commands[groups[group]]
        merged[by] = tuple(dict.fromkeys([*merged[by], *kwargs[by]]))
        members.append((key, tuple(kwargs[by])))
    # The answers several of these facts print, once (see facts.util.SHARED_VALUES).
    names = dict.fromkeys(name for instance, _, _ in commands for name in getattr(instance, "shared_values", ()))
    parts: list[Any] = [f"{name}=$({SHARED_VALUES[name]});" for name in names]
    for index, (instance, kwargs, _) in enumerate(commands):
        command = instance.command(**kwargs) if callable(instance.command) else instance.command
        requires = instance.requires_command
        requires = requires(**kwargs) if callable(requires) else requires
        status = f'echo "{PREFETCH_MARK} rc $?";'
        # A subshell keeps a command's cd, exit or variables to itself; a fact whose command leaves nothing
        # behind says so (``needs_subshell = False``) and runs in the shell itself: one fork fewer each.
        opening, closing = ("(", ");") if getattr(instance, "needs_subshell", True) else ("{", "\n};")
        parts += [f"echo '{PREFETCH_MARK} {index}';"]
        if requires:
            parts += ["if command -v", requires, ">/dev/null 2>&1; then", opening, command, closing, status,
                      f"else echo '{PREFETCH_MARK} missing'; fi;"]
        else:
            parts += [opening, command, closing, status]
    with gate(host):
        ok, output = host.run_shell_command(
            StringCommand(*parts), print_output=host.state.print_fact_output,
            print_input=host.state.print_fact_input, **escalation(host, use_current_op=True),
        )
    if not ok:
        return 0
    sections: dict[int, list[str]] = {}
    results: dict[int, str] = {}
    current = -1
    for line in output.stdout_lines:
        if line.startswith(PREFETCH_MARK):
            word = line[len(PREFETCH_MARK):].split()
            if word[0] == "rc":
                results[current] = word[1]
            elif word[0] == "missing":
                results[current] = "missing"
            else:
                current = int(word[0])
                sections[current] = []
        elif current >= 0:
            sections[current].append(line)
    count = 0
    for index, (instance, _, members) in enumerate(commands):
        if results.get(index) != "0":
            continue  # missing, failed or cut short: the operation reads it itself
        lines = sections.get(index, [])
        try:
            value = instance.process(lines) if lines else instance.default()
        except Exception:  # noqa: BLE001, S112 - the operation's own read reports it the way pyinfra does
            continue
        for key, items in members:
            part = value if items is None else instance.pick(value, items)
            if part is not None:  # None: this part cannot be told apart (the operation reads it itself)
                shared[key] = {"lock": Semaphore(), "read": True, "value": part}
                _first_reads(host).setdefault(key, part)
                count += 1
    return count


def forget(host: Host, fact: Any) -> None:
    """Drop ``host``'s shared reads of ``fact`` (see ``shared_fact``): an operation is about to change it."""
    shared = _shared_reads(host)
    for key in [key for key in shared if key[0] == fact.__name__]:
        del shared[key]


def _first_reads(host: Host) -> dict[tuple, Any]:
    """The first answer of each fact read for ``host`` in this run, by the same keys (``run_start_fact``)."""
    return run_store(host, "first_reads", dict)


def _shared_reads(host: Host) -> dict[tuple, dict[str, Any]]:
    """The facts read for ``host`` in this run (kept with the host for the run: see ``adapter.run_store``)."""
    return run_store(host, "shared_facts", dict)


def host_operation(changes: tuple[Any, ...] = (), **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """
    pyinfra's ``@operation()``, with two additions:

    + changes: the facts whose subject the operation changes when it yields commands (``FileStates`` for one that
      writes files): their shared reads on the host are forgotten as it yields its first command, so the next
      operation that asks reads them afresh (see ``shared_fact``). An operation that yields nothing changed
      nothing and forgets nothing.
    + An error raised while the operation works out its commands during the run (an ``OperationError``, or the
      host's connection lost as the operation reads from it) fails that host only, as a failing command does.
      pyinfra itself ends the whole run, for every host, on such an error. Argument errors
      (``OperationValueError``) and every error while planning still stop the run before any host is touched.
    """

    def decorate(func: Callable[..., Any]) -> Any:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            commands = _forgetting(func(*args, **kwargs), changes)
            if not executing(current_host.state):
                yield from commands
                return
            try:
                yield from commands
            except OperationValueError:
                raise
            except HOST_ERRORS as exc:
                yield FunctionCommand(_host_failed, (host_error(exc),), {})

        guarded.changes = changes  # type: ignore[attr-defined]
        return operation(**options)(guarded)

    return decorate


def _forgetting(commands: Any, facts: tuple[Any, ...]) -> Any:
    """``commands``, with ``facts`` forgotten on the current host before the first one."""
    for index, command in enumerate(commands):
        if index == 0:
            for fact in facts:
                forget(current_host, fact)
        yield command


def host_error(exc: BaseException) -> str:
    """What one of :data:`HOST_ERRORS` means, for a message (a lost connection named as such)."""
    if isinstance(exc, OperationError):
        return str(exc)
    return f"the connection was lost ({type(exc).__name__}{f': {exc}' if str(exc) else ''})"


def _host_failed(state: State, host: Host, message: str) -> bool:  # pyinfra passes state and host by these names
    host.log_styled(f"Error: {message}", fg="red", log_func=logger.error)
    return False

