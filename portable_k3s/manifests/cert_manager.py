"""cert-manager (its Helm chart with CRDs) and the ClusterIssuers the apps' certificates come from."""

from __future__ import annotations

from ..render import render, to_yaml
from ..versions import CHARTS

ACME_SERVERS = {
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
    "letsencrypt-production": "https://acme-v02.api.letsencrypt.org/directory",
}


def render_cert_manager() -> str:
    """cert-manager's namespace and HelmChart; the chart installs and keeps its CRDs."""
    repo, version = CHARTS["cert-manager"]
    values = {"crds": {"enabled": True, "keep": True}}
    return render("manifests/cert-manager.yaml.j2", repo=repo, chart="cert-manager", version=version,
                  values=to_yaml(values))


def render_issuers(
    email: str | None, solver: str, provider: str | None, token: str | None, default_issuer: str,
    internal_issuer: str,
) -> str:
    """
    Let's Encrypt staging and production ClusterIssuers solving HTTP-01 through Traefik, or DNS-01 at
    ``provider`` with ``token`` (kept in a Secret in cert-manager's namespace); and a self-signed CA for private
    apps under HTTP-01.
    """
    return render(
        "manifests/cluster-issuers.yaml.j2", acme_servers=ACME_SERVERS, email=email, solver=solver,
        provider=provider, token=token if solver == "dns01" else None, default_issuer=default_issuer,
        internal_issuer=internal_issuer,
    )
