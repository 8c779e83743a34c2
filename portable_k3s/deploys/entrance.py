"""The entrance node: nginx forwarding only the catalog's public apps to the cluster over the tailnet."""

from __future__ import annotations

from functools import partial
from typing import Any

from pyinfra import host
from pyinfra.api import Host, deploy

from ..connection import ssh_tcp_options
from ..facts.files import FileStates
from ..facts.services import ServiceStates
from ..operations import nginx, packages, prefetch, services
from ..render import render
from ..settings import defaults
from ..settings import entrance as entrance_registry

ENTRANCE_DEFAULTS: dict[str, Any] = defaults(entrance_registry.SETTINGS)  # portable_k3s.settings.entrance


PENDING = services.pending_marker("nginx.service", "reload")  # a config change nginx has not taken up yet
MANAGED = (nginx.NGINX_CONF, PENDING)


def entrance_settings(entrance_host: Host) -> dict[str, Any]:
    """An entrance host's settings (its data over ``ENTRANCE_DEFAULTS``), also from another host's deploy."""
    return {key: entrance_host.data.get(key, default) for key, default in ENTRANCE_DEFAULTS.items()}


def render_entrance(apps: list[Any], settings: dict[str, Any], backends: list[str]) -> str:
    """The entrance's nginx.conf for these public apps (``App`` objects) and backend addresses."""
    public = [app for app in apps if app.public]
    return render(
        "entrance-nginx.conf.j2",
        backends=backends,
        https_hostnames=sorted(app.hostname for app in public if app.hostname),
        tcp_apps=sorted((app for app in public if app.tcp_port), key=lambda app: app.tcp_port),
        https_port=settings["entrance_https_port"],
        http_port=settings["entrance_http_port"],
        connect_timeout=settings["entrance_connect_timeout"],
        fail_timeout=settings["entrance_fail_timeout"],
        preread_timeout=int(settings["entrance_preread_timeout"]),
        per_address=int(settings["entrance_connections_per_address"]),
        worker_connections=int(settings["entrance_worker_connections"]),
    )


@deploy("Entrance", data_defaults=ENTRANCE_DEFAULTS)
def entrance(apps: list[Any], backends: list[str], headscale_host: Host) -> None:
    """
    nginx (with the stream module) on the entrance: a stream server on 443 passing TLS through by SNI, with the
    PROXY protocol, for every public app's hostname, to every k3s node's tailnet address; one stream server per
    public raw-TCP app; on port 80 only ACME challenges of public hostnames reach the cluster, the rest is
    redirected to https, and unknown hosts get no answer. Data keys:
    ``portable_k3s.settings.entrance``.

    + apps: the app catalog (``portable_k3s.config.App``)
    + backends: the tailnet names of the k3s nodes serving the ingress
    + headscale_host: the inventory host running headscale (it knows the nodes' tailnet addresses)
    """
    ssh_tcp_options()  # SSH without Nagle's delay, a lost host noticed: see portable_k3s.connection
    prefetch.facts(
        name="Read the entrance state in one command",
        reads=[(FileStates, {"paths": MANAGED}), (ServiceStates, {"units": ("nginx.service",)})],
        early=True,
    )
    settings = entrance_settings(host)
    packages.installed(name="Install nginx with the stream module", packages=["nginx", "libnginx-mod-stream"])
    upstream = settings["entrance_upstream"]
    config = nginx.entrance_config(
        name="Entrance nginx config", render_config=partial(render_entrance, apps, settings), backends=backends,
        headscale_host=headscale_host, address=None if upstream == "nodes" else upstream, pending=PENDING,
        batch=MANAGED,
    )
    # A config written by a run that stopped before reloading nginx is still to be taken up.
    pending = services.left_pending(PENDING, MANAGED)
    services.running(name="Run nginx", service="nginx.service")
    services.reloaded(
        name="Reload nginx after a config change", service="nginx.service", pending=PENDING,
        _if=lambda: config.did_change() or pending(),
    )
