"""systemd services kept running and enabled (or stopped and disabled)."""

from __future__ import annotations

from collections.abc import Callable

from pyinfra import host
from pyinfra.api import OperationValueError, QuoteString, StringCommand

from ..adapter import current_host
from ..facts.files import FileStates
from ..facts.services import ServiceState, ServiceStates
from .util import host_operation, run_start_fact, shared_fact

# Unit file states that start the unit at boot (or that systemd manages without an [Install] section).
STARTS_AT_BOOT = ("enabled", "enabled-runtime", "static", "alias", "indirect", "generated")
PENDING_DIR = "/var/lib/portable-k3s/pending"  # markers of changes a service has not taken up yet


def start_command(verb: str, service: str, timeout: int | None) -> StringCommand:
    """``systemctl <verb> <service>``; with ``timeout``, without blocking, then waiting at most that many seconds
    for the unit to be active: a unit that is still starting then (k3s waiting for its server, for one) fails
    the command with its last log lines, instead of hanging the deploy (k3s's units have no start timeout)."""
    unit = QuoteString(service)
    if timeout is None:
        return StringCommand("systemctl", verb, unit)
    return StringCommand(
        "systemctl", verb, "--no-block", unit, "&& { timeout", str(timeout), "sh -c",
        QuoteString(f"until systemctl is-active -q {service}; do sleep 1; done"), "|| {",
        f"echo '{service} is not active {timeout} s after systemctl {verb}; its last log lines:' >&2;",
        "journalctl -u", unit, "-n 15 --no-pager >&2; exit 1; }; }",
    )


def _unit_state(service: str, batch: tuple[str, ...] | None) -> ServiceState:
    """The unit's state, from the one read of its component's units; the name and batch checked first."""
    if not service.endswith((".service", ".socket", ".timer")):
        raise OperationValueError(f"service: {service!r} (expected a unit name such as nginx.service)")
    units = tuple(batch or (service,))
    if service not in units:
        raise OperationValueError(f"batch: does not include {service}")
    state: ServiceState = shared_fact(host, ServiceStates, units=units).get(service, {"active": False, "enabled": ""})
    return state


@host_operation(changes=(ServiceStates,))
def running(service: str, enabled: bool = True, batch: tuple[str, ...] | None = None, timeout: int | None = None):
    """
    Start a service unit that is not active and enable it if it would not start at boot.

    + service: the unit, e.g. ``nginx.service``
    + enabled: also enable it (start at boot)
    + batch: all units of the component: their states are read in one remote command, shared by these ops
    + timeout: seconds to wait for the unit to be active (see ``start_command``); None: systemctl's own wait

    **Example:**

    .. code:: python

        services.running(name="Run headscale", service="headscale.service")
    """
    state = _unit_state(service, batch)
    commands = []
    if enabled and state["enabled"] not in STARTS_AT_BOOT:
        commands.append(StringCommand("systemctl enable", QuoteString(service)))
    if not state["active"]:
        commands.append(start_command("start", service, timeout))
    if not commands:
        host.noop(f"{service} is running" + (" and enabled" if enabled else ""))
        return
    yield from commands


def pending_marker(service: str, verb: str = "restart") -> str:
    """The marker of a change ``service`` has not taken up yet: made with the change (``files.content``'s
    ``pending``), removed by the restart (or with ``verb`` ``reload``, the reload) that takes it up
    (``restarted``'s or ``reloaded``'s ``pending``)."""
    return f"{PENDING_DIR}/{service}.{verb}"


def left_pending(marker: str, batch: tuple[str, ...]) -> Callable[[], bool]:
    """
    A check, for an ``_if=``, of whether ``marker`` was on the host when the run started: a change written by a run
    that stopped before the restart or reload that takes it up (not a mark this run made with its own change). It
    reads when the run gets there, from the component's one read of its files (``batch``, which the host's prefetch
    has read already), and costs no command while planning.
    """
    target = current_host()

    def pending() -> bool:
        return run_start_fact(target, FileStates, paths=batch).get(marker) is not None

    return pending


def clearing(command: StringCommand, pending: str | tuple[str, ...] | None) -> StringCommand:
    """``command`` (a restart or reload), then the ``pending`` marker(s) removed once it succeeded."""
    markers = (pending,) if isinstance(pending, str) else tuple(pending or ())
    return StringCommand(command, "&& rm -f", *map(QuoteString, markers)) if markers else command


def _again(verb: str, service: str, timeout: int | None, pending: str | tuple[str, ...] | None):
    """``systemctl <verb>`` of the unit, then its ``pending`` marker(s) removed."""
    if not service.endswith((".service", ".socket", ".timer")):
        raise OperationValueError(f"service: {service!r} (expected a unit name such as nginx.service)")
    yield clearing(start_command(verb, service, timeout), pending)


@host_operation(changes=(ServiceStates, FileStates), is_idempotent=False)
def restarted(service: str, timeout: int | None = None, pending: str | tuple[str, ...] | None = None):
    """
    Restart a service unit (call it with ``_if=`` a change of its config, or its ``pending`` marker there),
    waiting at most ``timeout`` seconds for it to be active again.

    + service: the unit, e.g. ``k3s.service``
    + timeout: seconds to wait for the unit to be active (see ``start_command``); None: systemctl's own wait
    + pending: the unit's marker (``pending_marker``), removed once it restarted: a change written by a run that
      stopped before this restart leaves it, so the next run restarts (several: a restart also takes up what a
      reload would)

    **Example:**

    .. code:: python

        services.restarted(name="Restart k3s", service="k3s.service", timeout=300, _if=config.did_change)
    """
    yield from _again("restart", service, timeout, pending)


@host_operation(changes=(ServiceStates, FileStates), is_idempotent=False)
def reloaded(service: str, pending: str | None = None):
    """
    Reload a service unit (call it with ``_if=`` a change of its config, or its ``pending`` marker there).

    + service: the unit, e.g. ``nginx.service``
    + pending: the unit's marker (``pending_marker(service, "reload")``), removed once it reloaded: a change written
      by a run that stopped before this reload leaves it, so the next run reloads

    **Example:**

    .. code:: python

        services.reloaded(name="Reload nginx", service="nginx.service", _if=config.did_change)
    """
    yield from _again("reload", service, None, pending)


@host_operation(changes=(ServiceStates,), is_idempotent=False)
def restarted_if_running(services: list[str], timeout: int):
    """
    Restart those of ``services`` that are running or starting (also when systemd is about to restart them after a
    failure; call it with ``_if=`` what makes them need it), waiting at most ``timeout`` seconds for each to be
    active again; a unit that is stopped is left alone.

    + services: the units, e.g. ``["k3s.service", "k3s-agent.service"]``
    + timeout: seconds to wait for each restarted unit to be active (see ``start_command``)

    **Example:**

    .. code:: python

        services.restarted_if_running(name="Restart k3s", services=["k3s.service"], timeout=300, _if=joined.did_change)
    """
    for service in services:
        if not service.endswith((".service", ".socket", ".timer")):
            raise OperationValueError(f"services: {service!r} (expected a unit name such as nginx.service)")
    for service in services:
        yield StringCommand("case $(systemctl is-active", QuoteString(service), ") in active|activating|reloading)",
                            start_command("restart", service, timeout), ";; esac")


@host_operation(changes=(ServiceStates,))
def stopped(service: str, batch: tuple[str, ...] | None = None):
    """
    Stop a service unit and disable it, if it is running or enabled.

    + service: the unit, e.g. ``portable-k3s-app-probe.timer``
    + batch: all units of the component: their states are read in one remote command, shared by these ops

    **Example:**

    .. code:: python

        services.stopped(name="No app probes", service="portable-k3s-app-probe.timer")
    """
    state = _unit_state(service, batch)
    if not state["active"] and state["enabled"] != "enabled":
        host.noop(f"{service} is stopped and disabled")
        return
    yield StringCommand("systemctl disable --now", QuoteString(service))
