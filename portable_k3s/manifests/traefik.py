"""k3s's bundled Traefik, configured by a HelmChartConfig: PROXY protocol trusted from the entrance only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..render import render, to_yaml
from .apps import kind_of, tcp_entry_point

if TYPE_CHECKING:
    from ..config import AddonsConfig, App

# Traefik runs as an unprivileged user: an entry point below 1024 listens on this much higher inside the pod.
UNPRIVILEGED_OFFSET = 10000


def traefik_values(trusted: list[str], addons: AddonsConfig, apps: list[App]) -> dict[str, Any]:
    """
    The bundled Traefik chart's values.

    + trusted: the entrance hosts' tailnet addresses; each becomes a /32 that Traefik takes the PROXY protocol and
      X-Forwarded-* headers from (never the whole tailnet: any node could forge client addresses)
    + addons: with ``lb_address`` None the entrance connects to every node, so Traefik runs on every node with
      host ports; else MetalLB gives Traefik's service that address
    + apps: each deployed raw TCP app (``tcp_port``) gets an entry point of its own
    """
    cidrs = [f"{ip}/32" for ip in trusted]
    trust = {"proxyProtocol": {"trustedIPs": cidrs}, "forwardedHeaders": {"trustedIPs": cidrs}}
    nodes = addons.lb_address is None
    ports: dict[str, Any] = {
        "web": {**({"hostPort": addons.http_port} if nodes else {}),
                "redirections": {"entryPoint": {"to": "websecure", "scheme": "https", "permanent": True}}, **trust},
        "websecure": {**({"hostPort": addons.https_port} if nodes else {}), **trust},
    }
    for app in apps:
        kind = kind_of(app)
        if kind is None or kind.http or not app.tcp_port:
            continue
        inside = app.tcp_port if app.tcp_port >= 1024 else app.tcp_port + UNPRIVILEGED_OFFSET
        ports[tcp_entry_point(app.tcp_port)] = {
            "port": inside, "exposedPort": app.tcp_port, "protocol": "TCP", "expose": {"default": True},
            **({"hostPort": app.tcp_port} if nodes else {}),
            **({"proxyProtocol": {"trustedIPs": cidrs}} if app.proxy_protocol else {}),
        }
    service: dict[str, Any] = {"spec": {"externalTrafficPolicy": "Local"}}
    if not nodes:
        service["annotations"] = {"metallb.io/loadBalancerIPs": addons.lb_address}
    values: dict[str, Any] = {"ports": ports, "service": service}
    if nodes:
        values["deployment"] = {"kind": "DaemonSet"}
    return values


def render_traefik(trusted: list[str], addons: AddonsConfig, apps: list[App]) -> str:
    """The ``traefik`` HelmChartConfig in kube-system (see ``traefik_values``)."""
    values = traefik_values(trusted, addons, apps)
    return render("manifests/traefik-config.yaml.j2", trusted=[f"{ip}/32" for ip in trusted],
                  values=to_yaml(values))
