"""Settings of k3s on the nodes: the release, the tailnet mode, etcd and its snapshots, registries, upgrades."""

from __future__ import annotations

import re
from typing import Any

from .backups import s3_location
from .base import slug_type
from .core import (
    HOST,
    Check,
    Setting,
    boolean,
    check_secret,
    custom,
    integer,
    one_of,
    optional,
    secret,
    show,
    str_list,
    string,
    url,
    wrong_type,
)

K3S_DISABLE = ("coredns", "servicelb", "traefik", "local-storage", "metrics-server", "runtimes")
K3S_TAILNET_MODES = ("manual", "native")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
REGISTRY_SECRETS = ("password", "token", "auth", "identitytoken")  # in configs.<registry>.auth: references only
SERVERS = "k3s servers"
NODES = "k3s nodes"

# config.yaml keys the deploy writes itself, and where to set what they hold instead: k3s_extra_config may not
# set them (the deploy's value would be overridden, or its own setting ignored).
OWNED_FLAGS: dict[str, str] = {
    "node-name": "hostname",
    "node-ip": "k3s_tailnet_iface (the node's tailnet IPv4 is read from it)",
    "advertise-address": "k3s_tailnet_iface (the node's tailnet IPv4 is read from it)",
    "flannel-iface": "k3s_tailnet_iface",
    "tls-san": "hostname and tailnet_domain (a server's certificate names its tailnet name and address)",
    "server": "the order of k3s_servers (every node joins the first one)",
    "token": "k3s_token",
    "token-file": "k3s_token",
    "write-kubeconfig-mode": "k3s_kubeconfig (the admin kubeconfig is fetched to the deploying machine)",
    "vpn-auth": "k3s_tailnet_mode = 'native'",
    "vpn-auth-file": "k3s_tailnet_mode = 'native'",
    "disable": "k3s_disable",
    "cluster-init": "k3s_cluster_init",
    "node-label": "k3s_node_labels",
    "node-taint": "k3s_node_taints",
    "etcd-snapshot-schedule-cron": "k3s_etcd_snapshot_schedule",
    "etcd-snapshot-retention": "k3s_etcd_snapshot_retention",
    "etcd-s3": "k3s_etcd_s3",
    "etcd-s3-endpoint": "k3s_etcd_s3",
    "etcd-s3-bucket": "k3s_etcd_s3",
    "etcd-s3-region": "k3s_etcd_s3",
    "etcd-s3-folder": "k3s_etcd_s3",
    "etcd-s3-insecure": "k3s_etcd_s3",
    "etcd-s3-access-key": "s3_access_key",
    "etcd-s3-secret-key": "s3_secret_key",
    "cluster-reset": "k3s_move_from (a server move restores a snapshot)",
    "cluster-reset-restore-path": "k3s_move_from (a server move restores a snapshot)",
    "private-registry": "k3s_registries",
}
# config.yaml keys that hold a secret: in k3s_extra_config only as a secret reference, read when deploying.
SECRET_FLAGS: tuple[str, ...] = ("agent-token", "datastore-endpoint", "etcd-s3-session-token")

_K8S_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_LABEL_KEY = rf"(([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/)?{_K8S_NAME}"
NODE_LABEL = rf"{_LABEL_KEY}={_K8S_NAME}?"
NODE_TAINT = rf"{_LABEL_KEY}(={_K8S_NAME})?:({'|'.join(TAINT_EFFECTS)})"
_FLAG = r"[a-z0-9]+(-[a-z0-9]+)*"
_IFACE = r"[A-Za-z0-9._-]{1,15}"
_CRON = r"\S+( \S+){4}"
_REGISTRY = r"(\*|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?)"
REGISTRIES_SHAPE = ('{"mirrors": {"docker.io": {"endpoint": ["https://registry.lan:5000"]}}, "configs": '
                    '{"registry.lan:5000": {"auth": {"username": "me", "password": {"env": "REGISTRY_PASSWORD"}}, '
                    '"tls": {"ca_file": "/etc/ssl/lan-ca.pem"}}}} or None')


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _check_extra_config(value: Any) -> Check:
    if not isinstance(value, dict):
        return [(wrong_type(value), 'a dict of k3s flags, like {"kube-proxy-arg": ["proxy-mode=ipvs"]}')]
    problems: Check = []
    for key, item in value.items():
        if not isinstance(key, str) or not re.fullmatch(_FLAG, key):
            problems.append((f"{show(key)} is not a k3s flag name", "flag names without --, like kubelet-arg"))
        elif key in OWNED_FLAGS:
            problems.append((f".{key}", "is written by the deploy itself", f"{OWNED_FLAGS[key]} instead"))
        elif key in SECRET_FLAGS:
            problems += [(f".{key}", problem, expected) for problem, expected in check_secret(item)]
        elif not (_is_scalar(item) or (isinstance(item, list) and all(_is_scalar(x) for x in item))):
            problems.append((f".{key}", f"{show(item)} is not a flag value",
                             "a string, number, True/False or a list of them, as k3s's config.yaml takes"))
    return problems


def _check_registries(value: Any) -> Check:  # noqa: C901 - one walk over registries.yaml's documented shape
    """k3s's registries.yaml as data: ``mirrors`` (endpoint URLs, rewrite rules) and ``configs`` (auth as secret
    references, tls files), or None."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [(wrong_type(value), REGISTRIES_SHAPE)]
    problems: Check = []
    for key in sorted(set(value) - {"mirrors", "configs"}, key=str):
        problems.append((f"unknown key {show(key)}", '"mirrors" and "configs", as in k3s\'s registries.yaml'))
    for part in ("mirrors", "configs"):
        if not isinstance(value.get(part, {}), dict):
            problems.append((f"{part}: {wrong_type(value[part])}", f"a dict by registry name: {REGISTRIES_SHAPE}"))
    mirrors: dict[Any, Any] = value["mirrors"] if isinstance(value.get("mirrors"), dict) else {}
    configs: dict[Any, Any] = value["configs"] if isinstance(value.get("configs"), dict) else {}
    for name, mirror in mirrors.items():
        where = f"mirrors[{show(name)}]"
        if not isinstance(name, str) or not re.fullmatch(_REGISTRY, name):
            problems.append((f"{where}: not a registry name", "a registry host[:port] like docker.io, or *"))
        if not isinstance(mirror, dict):
            problems.append((f"{where}: {wrong_type(mirror)}", '{"endpoint": ["https://…"], "rewrite": {…}}'))
            continue
        for key in sorted(set(mirror) - {"endpoint", "rewrite"}, key=str):
            problems.append((f"{where}: unknown key {show(key)}", '"endpoint" and "rewrite"'))
        endpoints = mirror.get("endpoint", [])
        if not isinstance(endpoints, list) or not all(
            isinstance(e, str) and e.startswith(("https://", "http://")) and len(e) > 8 for e in endpoints
        ):
            problems.append((f"{where}.endpoint: {show(endpoints)} is not a list of URLs",
                             'registry URLs like ["https://registry.lan:5000"]'))
        rewrite = mirror.get("rewrite", {})
        if not isinstance(rewrite, dict):
            problems.append((f"{where}.rewrite: {wrong_type(rewrite)}", '{"^rancher/(.*)": "mirror/rancher/$1"}'))
            continue
        for pattern, target in rewrite.items():
            try:
                re.compile(pattern)
                valid = isinstance(target, str)
            except (re.error, TypeError):
                valid = False
            if not valid:
                problems.append((f"{where}.rewrite: {show(pattern)} -> {show(target)} is not a rewrite rule",
                                 "a regular expression mapped to the repository to pull instead"))
    for name, config in configs.items():
        where = f"configs[{show(name)}]"
        if not isinstance(name, str) or not re.fullmatch(_REGISTRY, name):
            problems.append((f"{where}: not a registry name", "a registry host[:port] like registry.lan:5000, or *"))
        if not isinstance(config, dict):
            problems.append((f"{where}: {wrong_type(config)}", '{"auth": {…}, "tls": {…}}'))
            continue
        for key in sorted(set(config) - {"auth", "tls"}, key=str):
            problems.append((f"{where}: unknown key {show(key)}", '"auth" and "tls"'))
        auth = config.get("auth", {})
        if not isinstance(auth, dict):
            problems.append((f"{where}.auth: {wrong_type(auth)}", '{"username": …, "password": {"env": …}}'))
            auth = {}
        for key in sorted(set(auth) - {"username", *REGISTRY_SECRETS}, key=str):
            problems.append((f"{where}.auth: unknown key {show(key)}",
                             f"username, {', '.join(REGISTRY_SECRETS)}"))
        if "username" in auth and not isinstance(auth["username"], str):
            problems.append((f"{where}.auth.username: {wrong_type(auth['username'])}", "the user name"))
        for key in REGISTRY_SECRETS:
            if key in auth:
                problems += [(f"{where}.auth.{key}: {problem}", expected)
                             for problem, expected in check_secret(auth[key])]
        tls = config.get("tls", {})
        if not isinstance(tls, dict):
            problems.append((f"{where}.tls: {wrong_type(tls)}", '{"ca_file": "/etc/ssl/lan-ca.pem"}'))
            continue
        for key, item in tls.items():
            if key in ("cert_file", "key_file", "ca_file"):
                if not isinstance(item, str) or not item.startswith("/"):
                    problems.append((f"{where}.tls.{key}: {show(item)} is not an absolute path",
                                     "a file on the node, like /etc/ssl/lan-ca.pem"))
            elif key == "insecure_skip_verify":
                if not isinstance(item, bool):
                    problems.append((f"{where}.tls.{key}: {wrong_type(item)}", "true or false"))
            else:
                problems.append((f"{where}.tls: unknown key {show(key)}",
                                 "cert_file, key_file, ca_file, insecure_skip_verify"))
    return problems


def _seconds() -> Any:
    return integer(10, 3600, "whole seconds 10-3600")


def _not_blank(what: str, expected: str) -> Any:
    return optional(string(r".*\S.*", what, expected))


SETTINGS: tuple[Setting, ...] = (
    secret("k3s_token", "the cluster token (a secret reference); none: the first server makes one and every other "
           "node copies it", read_on=NODES),
    Setting("k3s_download_url", url("the base of k3s's release downloads",
                                    "https://github.com/k3s-io/k3s/releases/download"),
            "release base URL", "https://github.com/k3s-io/k3s/releases/download", read_on=NODES,
            default_doc="GitHub releases"),
    Setting("k3s_sha256", optional(string(r"[0-9a-f]{64}", "sha256", "64 lower-case hex digits, or None to use the "
                                          "release checksums")),
            "an optional sha256 pin of the binary instead of the release's `sha256sum-<arch>.txt`", None,
            read_on=NODES),
    Setting("k3s_airgap_images", boolean(), "also install the release's `k3s-airgap-images-<arch>.tar.zst` (verified "
            "with the same checksum list) as `/var/lib/rancher/k3s/agent/images/k3s-airgap-images.tar.zst`, so k3s "
            "starts without pulling its system images", False, read_on=NODES),
    Setting("k3s_tailnet_iface", string(_IFACE, "interface name", "the tailnet interface, tailscale0", 15),
            "the interface k3s and flannel use (`flannel-iface`)", "tailscale0", read_on=NODES),
    Setting("k3s_tailnet_mode", one_of(K3S_TAILNET_MODES, "tailnet mode", "'manual' (node-ip and flannel-iface on "
                                       "tailscale0) or 'native' (k3s's own vpn-auth tailscale integration)"),
            "`manual`: node-ip and flannel-iface on tailscale0, set by the deploy; `native`: k3s's own tailscale "
            "integration (`vpn-auth-file`); one mode for the whole cluster", "manual", read_on=NODES),
    Setting("k3s_cluster_init", boolean(), "embedded etcd on the first server (snapshots; servers can join later); "
            "`False`: k3s's single-server SQLite", True, read_on=SERVERS),
    Setting("k3s_disable", custom(
        lambda v: [] if isinstance(v, list | tuple) and all(x in K3S_DISABLE for x in v)
        else [(f"{show(v)} is not a list of k3s components", f"a list of {', '.join(K3S_DISABLE)}")],
        {"type": "array", "items": {"enum": list(K3S_DISABLE)}}),
        "packaged components to leave out: " + ", ".join(f"`{c}`" for c in K3S_DISABLE), ["servicelb"],
        read_on=SERVERS),
    Setting("k3s_node_labels", str_list(string(NODE_LABEL, "valid node label", "key=value node labels, like "
                                               "disk=ssd"), "key=value node labels, like disk=ssd"),
            "`key=value` labels", [], read_on=NODES),
    Setting("k3s_node_taints", str_list(string(NODE_TAINT, "valid taint", "key=value:Effect taints, Effect one of "
                                               + ", ".join(TAINT_EFFECTS)), "key=value:Effect taints"),
            "`key=value:Effect` taints (" + ", ".join(TAINT_EFFECTS) + ")", [], read_on=NODES),
    Setting("k3s_etcd_snapshot_schedule", optional(string(_CRON, "cron schedule", "five cron fields like "
                                                          "'0 */6 * * *', or None for no snapshots")),
            "etcd snapshots (cron); `None`: no scheduled snapshots", "0 */6 * * *", read_on=SERVERS),
    Setting("k3s_etcd_snapshot_retention", integer(1, 1000, "a number of snapshots, 1-1000"),
            "how many etcd snapshots to keep", 20, read_on=SERVERS),
    Setting("k3s_etcd_s3", s3_location("etcd"),
            '`{"endpoint", "bucket", "region", "folder", "insecure"}`: snapshots also to S3; needs `s3_access_key` '
            "and `s3_secret_key`; `insecure`: plain http (`etcd-s3-insecure`)", None, read_on=SERVERS),
    Setting("k3s_extra_config", custom(_check_extra_config, {"type": "object"}),
            "more `config.yaml` keys (k3s flag names); the keys the deploy writes are refused with the setting to "
            "use instead (`portable_k3s.settings.k3s.OWNED_FLAGS`), and " + ", ".join(f"`{f}`" for f in SECRET_FLAGS)
            + " take secret references only", {}, read_on=NODES),
    Setting("k3s_registries", custom(_check_registries, {"type": ["object", "null"]}),
            "`/etc/rancher/k3s/registries.yaml` (0600; a change restarts k3s): `mirrors` (`endpoint` URLs, `rewrite` "
            "rules) and `configs` (`auth` with `username` and `password`/`token`/`auth`/`identitytoken` as secret "
            "references, `tls` files) as in k3s's docs; `None` leaves the file alone", None, read_on=NODES),
    Setting("k3s_lan", optional(slug_type()), "HA: the LAN every server is on (all must share one)", None,
            read_on=SERVERS),
    Setting("k3s_etcd_across_vpn", boolean(), "HA: `True` on every server to accept etcd over the VPN", False,
            read_on=SERVERS),
    Setting("k3s_drain_timeout", _seconds(), "upgrade: seconds for a drain", 300, read_on=NODES),
    Setting("k3s_ready_timeout", _seconds(), "upgrade: seconds for the node to be Ready again", 300, read_on=NODES),
    Setting("k3s_kubeconfig", _not_blank("path", "a path on the machine running pyinfra, or None to not fetch it"),
            "where the admin kubeconfig is written on the machine running pyinfra; `None`: not fetched",
            "~/.kube/portable-k3s.yaml", read_on="first server"),
    Setting("k3s_move_from", _not_blank("host name", "the inventory name of the server whose cluster the first "
                                        "server takes over, or None"),
            "the inventory host whose cluster this new first server takes over (etcd snapshot, restore, every node "
            'follows, k3s off the old host): see "Moving the k3s server"', None, HOST, "first server"),
    Setting("k3s_state", one_of(("present", "absent"), "state", "'present' or 'absent' (uninstall k3s from the "
                                "node)"), "`absent` removes k3s from the node", "present", read_on=NODES),
    Setting("k3s_remove_data", boolean(), "with `k3s_state = 'absent'`: also its data, CNI interfaces and iptables "
            "rules", False, read_on=NODES),
)
