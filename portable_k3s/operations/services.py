"""systemd services kept running and enabled."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationValueError, QuoteString, StringCommand, operation

from ..facts.services import ServiceStates
from .util import forget, shared_fact

# Unit file states that start the unit at boot (or that systemd manages without an [Install] section).
STARTS_AT_BOOT = ("enabled", "enabled-runtime", "static", "alias", "indirect", "generated")


@operation()
def running(service: str, enabled: bool = True, batch: tuple[str, ...] | None = None):
    """
    Start a service unit that is not active and enable it if it would not start at boot.

    + service: the unit, e.g. ``nginx.service``
    + enabled: also enable it (start at boot)
    + batch: all units of the component: their states are read in one remote command, shared by these ops

    **Example:**

    .. code:: python

        services.running(name="Run headscale", service="headscale.service")
    """
    if not service.endswith((".service", ".socket", ".timer")):
        raise OperationValueError(f"service: {service!r} (expected a unit name such as nginx.service)")
    units = tuple(batch or (service,))
    if service not in units:
        raise OperationValueError(f"batch: does not include {service}")
    state = shared_fact(host, ServiceStates, units=units).get(service, {"active": False, "enabled": ""})
    commands = []
    if enabled and state["enabled"] not in STARTS_AT_BOOT:
        commands.append(StringCommand("systemctl enable", QuoteString(service)))
    if not state["active"]:
        commands.append(StringCommand("systemctl start", QuoteString(service)))
    if not commands:
        host.noop(f"{service} is running" + (" and enabled" if enabled else ""))
        return
    forget(host, ServiceStates)
    yield from commands
