"""Operations for time synchronisation (systemd-timesyncd)."""

from __future__ import annotations

import os
from io import StringIO

from pyinfra import host
from pyinfra.api import OperationValueError, QuoteString, StringCommand
from pyinfra.api.command import FileUploadCommand

from ..facts.files import FileStates
from ..facts.services import ServiceStates
from ..facts.timesync import Timesyncd
from ..render import render, sha256
from .util import file_checksum, host_operation, shared_fact

TIMESYNCD_DROPIN = "/etc/systemd/timesyncd.conf.d/portable-k3s.conf"
TIMESYNCD_UNIT = "systemd-timesyncd.service"


@host_operation(changes=(FileStates, ServiceStates))
def timesyncd(
    servers: list[str], fallback: list[str] | None = None, path: str = TIMESYNCD_DROPIN, present: bool = True
):
    """
    Configure, enable and run ``systemd-timesyncd`` (install the package first), restarting it only when its
    config changed.

    In a container the clock belongs to the container host and timesyncd does not start (its unit has
    ``ConditionVirtualization=!container``): the config is written and the unit enabled, and the operation
    says so instead of trying to start it.

    + servers: NTP servers (host names or addresses)
    + fallback: FallbackNTP servers
    + path: the drop-in file
    + present: ``False`` removes the drop-in (timesyncd falls back to its own defaults) and restarts it if running

    **Example:**

    .. code:: python

        timesync.timesyncd(name="Time sync", servers=["0.debian.pool.ntp.org"])
    """
    if present and not servers:
        raise OperationValueError("servers: empty (expected at least one NTP server)")
    info = shared_fact(host, Timesyncd)
    current = file_checksum(host, path)
    unit = shared_fact(host, ServiceStates, units=(TIMESYNCD_UNIT,)).get(TIMESYNCD_UNIT, {"active": False,
                                                                                        "enabled": ""})
    active, enabled = unit["active"], unit["enabled"] == "enabled"
    if not present:
        if current is None:
            host.noop("timesyncd drop-in is absent")
            return
        yield StringCommand("rm -f", QuoteString(path))
        if active:
            yield f"systemctl restart {TIMESYNCD_UNIT}"
        return
    content = render("timesyncd.conf.j2", servers=servers, fallback=fallback or [])
    changed = current != sha256(content)
    if changed:
        yield StringCommand("mkdir -p", QuoteString(os.path.dirname(path) or "."))
        yield FileUploadCommand(StringIO(content), path)
    if not enabled:
        yield f"systemctl enable {TIMESYNCD_UNIT}"
    if info["container"]:
        if not changed and enabled:
            host.noop(
                f"timesyncd is configured; this host is a container ({info['container']}): "
                "its clock is the container host's, so timesyncd does not run here"
            )
        return
    if changed and active:
        yield f"systemctl restart {TIMESYNCD_UNIT}"
    elif not active:
        yield f"systemctl start {TIMESYNCD_UNIT}"
    elif not changed and enabled:
        host.noop("timesyncd is configured and running")
