"""Settings of the cluster add-ons: MetalLB, cert-manager's issuers, rook-ceph."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .core import ALL, Check, Setting, boolean, custom, integer, one_of, optional, predicate, secret, show, wrong_type

ISSUERS = ("letsencrypt-production", "letsencrypt-staging")
INTERNAL_ISSUER = "portable-k3s-internal-ca"  # private apps' certificates under HTTP-01 (Let's Encrypt can't reach)
DNS01_PROVIDERS = ("cloudflare", "digitalocean")
SOLVERS = ("http01", "dns01")
FIRST_SERVER = "first server"
_POOLS_EXPECTED = ("a list of LAN address ranges like ['192.168.1.240/28'] or ['192.168.1.240-192.168.1.250'], "
                   "or [] for no MetalLB")


def pool_span(pool: Any) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None:
    """A MetalLB pool (``192.168.1.240/28`` or ``192.168.1.240-192.168.1.250``) as its first and last address."""
    if not isinstance(pool, str):
        return None
    try:
        if "-" in pool:
            first, last = (ipaddress.IPv4Address(part.strip()) for part in pool.split("-", 1))
            return (first, last) if first <= last else None
        network = ipaddress.IPv4Network(pool, strict=True)
    except ValueError:
        return None
    return network[0], network[-1]


def _check_pools(value: Any) -> Check:
    if not isinstance(value, list | tuple):
        return [(wrong_type(value), _POOLS_EXPECTED)]
    return [(f"[{index}]", f"{show(pool)} is not an address range",
             "an IPv4 subnet like 192.168.1.240/28 or a range like 192.168.1.240-192.168.1.250")
            for index, pool in enumerate(value) if pool_span(pool) is None]


SETTINGS: tuple[Setting, ...] = (
    Setting("metallb_pools", custom(_check_pools, {"type": "array", "items": {"type": "string"}}),
            "MetalLB address pools on the home LAN (`192.168.1.240/28` or `192.168.1.240-192.168.1.250`); `[]`: no "
            "MetalLB. When `entrance_upstream` is an address in a pool, a `tailscale_advertise_routes` subnet must "
            "cover the whole pool", [], ALL, FIRST_SERVER),
    Setting("acme_email", optional(predicate(
        lambda v: re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", v) is not None, "email address",
        "the address Let's Encrypt writes to about expiring certificates, or None")),
        "Let's Encrypt's contact for expiring certificates", None, ALL, FIRST_SERVER),
    Setting("acme_issuer", one_of(ISSUERS, "issuer"), "the issuer apps use (`letsencrypt-staging` while trying "
            "things out: rate limits)", "letsencrypt-production", ALL, FIRST_SERVER),
    Setting("acme_solver", one_of(SOLVERS, "solver", "'http01' (through the entrance and Traefik) or 'dns01' (a DNS "
                                  "provider's API)"),
            "`http01` (through the entrance and Traefik) or `dns01` (through `dns01_provider`'s API)", "http01", ALL,
            FIRST_SERVER),
    Setting("dns01_provider", optional(one_of(DNS01_PROVIDERS, "supported DNS provider",
                                              f"one of {', '.join(DNS01_PROVIDERS)}, or None")),
            "with `dns01`: " + " or ".join(f"`{p}`" for p in DNS01_PROVIDERS) + ", its API token in `dns01_token`",
            None, ALL, FIRST_SERVER),
    secret("dns01_token", "the DNS provider's API token (a secret reference)", read_on=FIRST_SERVER),
    Setting("rook_ceph", optional(boolean("None: on when every k3s node has an external_ssd")),
            "rook-ceph on the nodes' `external_ssd` (`None`: on when every k3s node has one; `True`; `False`: apps "
            "use k3s's local-path)", None, ALL, FIRST_SERVER),
    Setting("rook_ceph_replicas", optional(integer(1, 7, "1-7, or None for one per k3s node, at most 3")),
            "copies of each block (`None`: one per k3s node, at most 3; validated against the nodes with a device)",
            None, ALL, FIRST_SERVER),
    Setting("rook_ceph_toolbox", boolean(), "rook's toolbox Deployment `rook-ceph-tools` next to the Ceph cluster "
            '(see "Backing up and restoring apps")', True, ALL, FIRST_SERVER),
)
