"""MetalLB: its Helm chart, and the address pools from ``metallb_pools`` with their L2 advertisement."""

from __future__ import annotations

from ..render import render
from ..versions import CHARTS


def render_metallb() -> str:
    """MetalLB's namespace and HelmChart (the chart version pinned in ``versions.CHARTS``)."""
    repo, version = CHARTS["metallb"]
    return render("manifests/metallb.yaml.j2", repo=repo, chart="metallb", version=version)


def render_pools(pools: list[str]) -> str:
    """The ``IPAddressPool`` of ``pools`` (CIDRs or ``first-last`` ranges) and its ``L2Advertisement``."""
    return render("manifests/metallb-pools.yaml.j2", pools=pools)
