"""Downtime alerts: the entrance probes every public app through the public path and tells ntfy when one changes."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from ..connection import ssh_tcp_options
from ..facts.files import FileStates
from ..facts.services import ServiceStates
from ..operations import files, prefetch, services
from ..render import render
from ..settings import alerts as alerts_settings
from ..settings import defaults, resolve_secret

ALERTS_DEFAULTS: dict[str, Any] = defaults(alerts_settings.SETTINGS)  # portable_k3s.settings.alerts

PROBE = "/usr/local/lib/portable-k3s/app-probe"
AUTH = "/etc/portable-k3s/ntfy-auth"
SERVICE = "portable-k3s-app-probe.service"
TIMER = "portable-k3s-app-probe.timer"
SERVICE_PATH = f"/etc/systemd/system/{SERVICE}"
TIMER_PATH = f"/etc/systemd/system/{TIMER}"
PENDING = services.pending_marker(TIMER)  # a unit or timer change the timer has not taken up yet
FILES = (PROBE, AUTH, SERVICE_PATH, TIMER_PATH, PENDING)


@deploy("Downtime alerts", data_defaults=ALERTS_DEFAULTS)
def downtime_alerts(apps: list[Any]) -> None:
    """
    On an entrance: a systemd timer probes every public app over https through this entrance (as the internet
    reaches it) and posts to an ntfy topic only when apps go down or come back up, one message per change, not per
    probe. A message that cannot be delivered is retried at the next probe. The token is a systemd credential
    (0600 file, never in argv or a unit). Without ``alerts_ntfy_url`` the timer and its files are removed. Data
    keys: ``portable_k3s.settings.alerts``; ``entrance_https_port``.

    + apps: the app catalog (``portable_k3s.config.App``)
    """
    ssh_tcp_options()  # SSH without Nagle's delay, a lost host noticed: see portable_k3s.connection
    data = host.data
    prefetch.facts(
        name="Read the downtime alerts' state in one command",
        reads=[(FileStates, {"paths": FILES}), (ServiceStates, {"units": (TIMER,)})],
        early=True,
    )
    if not data.alerts_ntfy_url:
        services.stopped(name="No app probes", service=TIMER)
        for path in FILES:
            files.absent(name=f"Remove {path}", path=path, batch=FILES)
        return

    names = sorted(app.hostname for app in apps if app.public and app.hostname)
    files.content(
        name="App probe script", path=PROBE, mode="0755", batch=FILES,
        text=render(
            "alerts/app-probe.sh.j2", names=names, url=data.alerts_ntfy_url, timeout=int(data.alerts_timeout),
            retry=int(data.alerts_retry), port=int(data.get("entrance_https_port") or 443),
            title=f"portable-k3s ({host.name})",
        ),
    )
    if data.alerts_ntfy_token:
        token = resolve_secret(data.alerts_ntfy_token, "alerts_ntfy_token").unmask().strip()
        files.content(name="ntfy token", path=AUTH, mode="0600", batch=FILES,
                      text=f"Authorization: Bearer {token}\n")
    else:
        files.absent(name="No ntfy token", path=AUTH, batch=FILES)
    unit = files.content(
        name="App probe service", path=SERVICE_PATH, batch=FILES, pending=PENDING,
        text=render("alerts/portable-k3s-app-probe.service.j2", probe=PROBE,
                    credential=AUTH if data.alerts_ntfy_token else None),
    )
    timer = files.content(
        name="App probe timer", path=TIMER_PATH, batch=FILES, pending=PENDING,
        text=render("alerts/portable-k3s-app-probe.timer.j2", interval=int(data.alerts_interval)),
    )
    # A unit or timer written by a run that stopped before the timer restarted is still to be taken up.
    pending = services.left_pending(PENDING, FILES)
    changed = any_changed(unit, timer)
    systemd.daemon_reload(name="Reload systemd for the app probe", _if=lambda: changed() or pending())
    # A changed interval takes effect when the timer restarts (a changed service with the reload; the restart
    # clears the mark of both); the script and token are read at each probe.
    services.restarted(name="Restart the app probe timer", service=TIMER, pending=PENDING,
                       _if=lambda: changed() or pending())
    services.running(name="Run the app probe timer", service=TIMER)
