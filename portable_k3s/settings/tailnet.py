"""Settings of the tailnet: headscale (the control server) and tailscale on every host."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .base import domain_type
from .core import (
    ALL,
    Check,
    Setting,
    boolean,
    custom,
    integer,
    is_domain,
    is_host_or_ip,
    is_ip,
    is_ipv4,
    is_label,
    listen_address,
    one_of,
    optional,
    port,
    predicate,
    secret,
    show,
    str_list,
    string,
    url,
    wrong_type,
)

TAG = r"tag:[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HEX64 = r"[0-9a-f]{64}"
TAILSCALE_MTU_RANGE = (1280, 1420)
HEADSCALE = "headscale"
TAILNET_HOSTS = "tailnet hosts"
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
ENV_VALUE = r'[^"\\$`\n]*'


def headscale_url_problems(value: Any) -> Check:
    """A URL with a valid host and no trailing slash (whether plain http is allowed is a rule of the inventory)."""
    expected = "a URL like https://headscale.example.org"
    if not isinstance(value, str):
        return [(wrong_type(value), expected)]
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("https", "http"):
        return [(f"{value!r} is not a URL", expected)]
    host = rest.split("/", 1)[0].rsplit(":", 1)[0] if not rest.startswith("[") else ""
    if not (is_domain(host) or is_host_or_ip(host)) or rest.endswith("/") or re.search(r"[\s\"'`$]", rest):
        return [(f"{value!r} has no valid host", "a URL like https://headscale.example.org, without a trailing slash")]
    return []


def _check_routes(value: Any) -> Check:
    if not isinstance(value, list):
        return [(wrong_type(value), "a list of subnets like ['192.168.1.0/24']")]
    for cidr in value:
        try:
            net = ipaddress.ip_network(cidr, strict=True) if isinstance(cidr, str) else None
        except ValueError:
            net = None
        if net is None or net.prefixlen == 0:
            return [(f"{show(cidr)} is not a subnet", "networks like 192.168.1.0/24 (use exit_nodes for 0.0.0.0/0)")]
    return []


def _check_env(value: Any) -> Check:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and re.fullmatch(ENV_NAME, k) and isinstance(v, str) and re.fullmatch(ENV_VALUE, v)
        for k, v in value.items()
    ):
        return [(f"{show(value)} is not an environment", 'a dict of NAME: "value" without quotes, $ or backticks')]
    return []


def _check_grants(value: Any) -> Check:
    if not isinstance(value, list) or not all(isinstance(g, dict) and {"src", "dst"} <= set(g) for g in value):
        return [("is not a list of grants", 'a list like [{"src": ["group:admins"], "dst": ["tag:k3s"], "ip": '
                 '["tcp:22"]}]')]
    return []


def _check_tags(value: Any) -> Check:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        return [(wrong_type(value), "a list of tags like ['tag:nas']")]
    return [(f"[{index}]", f"{show(tag)} is not a valid tag", "tags like tag:nas")
            for index, tag in enumerate(value) if not re.fullmatch(TAG, tag)]


_TAG_LIST = str_list(string(TAG, "valid tag", "tags like tag:nas"), "tags like tag:nas")
_IPV4 = predicate(is_ipv4, "IPv4 address", "an IPv4 address, or None", {"type": "string", "format": "ipv4"})

SETTINGS: tuple[Setting, ...] = (
    secret("headscale_api_key", "accepted so inventories that set it stay valid; nothing reads it (the deploys "
           "create what they need on the headscale host over SSH)", read_on="nothing"),
    Setting("headscale_url", custom(headscale_url_problems, {"type": "string", "format": "uri"}),
            "the URL nodes reach headscale at; `https://` (plain `http://` only with `headscale_allow_http = True`, "
            "as the lab does)", scope=ALL, required=True, default_doc="— (required)", read_on="tailnet hosts"),
    Setting("headscale_allow_http", boolean("True: a plain http:// headscale_url, for the local lab only"),
            "allow a plain `http://` `headscale_url` (the local lab; never on the internet)", False, ALL,
            read_on=HEADSCALE),
    Setting("tailnet_domain", domain_type(), "MagicDNS base domain, e.g. `tailnet.example.org`; must not contain "
            "headscale's own name", scope=ALL, required=True, default_doc="— (required)",
            read_on="headscale, k3s servers"),
    Setting("tailnet_admins", str_list(predicate(is_label, "valid user name", "headscale user names like admin"),
                                       "headscale user names like admin"),
            "headscale users who may reach everything in the tailnet", ["admin"], ALL, read_on=HEADSCALE),
    Setting("tailnet_tags", _TAG_LIST, 'extra tags your policy defines, e.g. `["tag:nas"]`', [], ALL,
            read_on=HEADSCALE),
    Setting("tailnet_extra_grants", custom(_check_grants, {"type": "array", "items": {
        "type": "object", "required": ["src", "dst"]}}), "your own policy grants, appended to the generated ones",
        [], ALL, read_on=HEADSCALE),
    Setting("tailnet_derp", one_of(("tailscale", "embedded"), "DERP mode", "'tailscale' or 'embedded'"),
            "`tailscale` (Tailscale's public DERP relays, as the seed does) or `embedded` (headscale's own, STUN on "
            "udp/3478)", "tailscale", ALL, read_on=HEADSCALE),
    Setting("headscale_derp_ipv4", optional(predicate(
        is_ipv4, "IPv4 address", "the public IPv4 of the headscale host for its embedded DERP relay, or None")),
        "the headscale host's public IPv4, advertised for the embedded DERP relay", None, ALL, read_on=HEADSCALE),
    Setting("tailnet_nameservers", str_list(predicate(is_ip, "valid address", "resolver IP addresses"),
                                            "resolver IP addresses"),
            "resolvers pushed to nodes; empty keeps each node's own", [], ALL, read_on=HEADSCALE),
    Setting("ingress_address", optional(predicate(
        is_ipv4, "IPv4 address", "the cluster ingress address private app names resolve to, or None for the first "
        "k3s server")),
        "where private app names resolve inside the tailnet; default: the first k3s server's tailnet IPv4", None,
        ALL, read_on=HEADSCALE),
    Setting("headscale_listen_addr", listen_address("HOST:PORT headscale listens on, like 0.0.0.0:8080"),
            "headscale's listener", "0.0.0.0:8080", read_on=HEADSCALE),
    Setting("headscale_download_url", url("the base of headscale's release downloads",
                                          "https://github.com/juanfont/headscale/releases/download"),
            "release base URL", "https://github.com/juanfont/headscale/releases/download", read_on=HEADSCALE,
            default_doc="GitHub releases"),
    Setting("headscale_sha256", optional(string(HEX64, "sha256", "64 lower-case hex digits or None")),
            "an optional sha256 pin of the binary instead of the release's `checksums.txt`", None, ALL,
            read_on=HEADSCALE),
    Setting("tailscale_install", one_of(("apt", "static"), "install method",
                                        "'apt' (the official repository) or 'static' (the tarball)"),
            "`apt` (the official repository) or `static` (the official static tarball)", "apt", read_on=TAILNET_HOSTS),
    Setting("tailscale_download_url", url("where the static tarball and its .sha256 are",
                                          "https://pkgs.tailscale.com/stable"),
            "where the static tarball and its `.sha256` are", "https://pkgs.tailscale.com/stable",
            read_on=TAILNET_HOSTS),
    Setting("tailscale_accept_dns", boolean(), "use MagicDNS", True, read_on=TAILNET_HOSTS),
    Setting("tailscale_accept_routes", boolean(), "accept subnet routes", False, read_on=TAILNET_HOSTS),
    Setting("tailscale_advertise_routes", custom(_check_routes, {"type": "array", "items": {"type": "string"}}),
            "subnets this node routes (approved automatically by the policy); k3s nodes join with "
            "`--snat-subnet-routes=false`, so what they forward from the tailnet (the entrance's connections to "
            "Traefik's host ports) keeps its tailnet source address, the one Traefik takes the PROXY protocol from "
            "(tailscaled's default masquerade would hide it)", [], read_on=TAILNET_HOSTS),
    Setting("tailscale_tags", custom(_check_tags, _TAG_LIST.schema),
            "extra tags (from `tailnet_tags`) on top of the ones its groups give", [], read_on=TAILNET_HOSTS),
    Setting("tailscaled_port", port("an integer port 1-65535"), "tailscaled's UDP port", 41641, read_on=TAILNET_HOSTS),
    Setting("tailscaled_env", custom(_check_env, {"type": "object", "additionalProperties": {"type": "string"}}),
            "extra environment for tailscaled", {}, read_on=TAILNET_HOSTS),
    Setting("tailscale_mtu", optional(integer(*TAILSCALE_MTU_RANGE, "null (tailscale's 1280) or an MTU from 1280 to "
                                              "1420 (1420: a 1500-byte path; 1412 over PPPoE)")),
        "the tailnet interface's MTU, 1280-1420 (`null`: tailscale's own 1280, safe on any path). 1420 fits a "
        "1500-byte path (1412 over PPPoE) and gave the lab's tailnet 17-33 % more throughput for about a fifth "
        "less tailscaled CPU (see the data-plane benchmark); set it on every host, only where every path between "
        "them carries it. Changing it restarts tailscaled (and k3s after it)", None, read_on=TAILNET_HOSTS),
    Setting("tailscale_upload_logs", boolean(), "`true` lets tailscaled upload its logs to Tailscale Inc. (off: "
            "`--no-logs-no-support`, nothing leaves the tailnet but traffic)", False, read_on=TAILNET_HOSTS),
)
