"""The cluster add-ons' and apps' manifests for the home inventory: they parse, built-in kinds pass
kubernetes-validate for the Kubernetes of the pinned k3s, custom resources match schemas of the upstream CRDs'
fields we use; the entrance lets in exactly the public apps; bad inputs are clear errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pyinfra.api import Inventory

from portable_k3s.config import ENTRANCE, ConfigError, load_inventory, validate_inventory
from portable_k3s.deploys.entrance import ENTRANCE_DEFAULTS, render_entrance
from portable_k3s.manifests import render_manifests
from portable_k3s.versions import CHARTS, VERSIONS

REPO = Path(__file__).resolve().parents[2]
ENTRANCE_IP = "100.64.0.7"
# k3s v1.35.3+k3s1 runs Kubernetes 1.35; kubernetes-validate 1.37.0 has schemas for 1.35.0 (checked below).
KUBERNETES = re.match(r"^v(\d+\.\d+)\.", VERSIONS["k3s"]).group(1) + ".0"  # type: ignore[union-attr]
SECRETS = ("KUTT_JWT_SECRET", "NEXTCLOUD_ADMIN_PASSWORD", "JUPYTERHUB_PASSWORD")


def _secret(key: str, reference: Any) -> str:
    return f"value-of-{key}"


def _home(**data: Any) -> Any:
    inventory = load_inventory(str(REPO / "inventories" / "home.py"), cwd=str(REPO))
    inventory.get_data().update(data)  # as if group_data/all.py set these too
    return validate_inventory(inventory, require_secrets=False, cwd=str(REPO))


def _documents(manifests: dict[str, str]) -> list[tuple[str, dict]]:
    found = []
    for name, text in manifests.items():
        for document in yaml.safe_load_all(text):
            if document:
                found.append((name, document))
    return found


def _variants() -> dict[str, dict[str, str]]:
    """The home inventory's manifests as they are, and with MetalLB and DNS-01 (every template branch)."""
    home = _home()
    routed = _home(metallb_pools=["192.168.1.240/28"], acme_solver="dns01", dns01_provider="cloudflare",
                   dns01_token={"env": "DNS01_TOKEN"}, acme_email="admin@example.org")
    return {
        "home": render_manifests(home, [ENTRANCE_IP], _secret),
        "metallb+dns01": render_manifests(routed, [ENTRANCE_IP, "100.64.0.8"], _secret),
        "backups": render_manifests(_home(**BACKUPS), [ENTRANCE_IP], _secret),
    }


BACKUPS = {"app_backup_s3": {"endpoint": "s3.example.org", "bucket": "backups", "folder": "apps", "region": "eu-1"},
           "app_backup_password": {"env": "APP_BACKUP_PASSWORD"}, "s3_access_key": {"env": "S3_ACCESS_KEY"},
           "s3_secret_key": {"env": "S3_SECRET_KEY"}}


# Schemas of the custom resources' fields we write, taken from the upstream CRD definitions (openAPIV3Schema) at
# the pinned versions. Only what these manifests use; unknown fields are refused, so a typo fails here.
_OBJECT_META = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "namespace": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}, "additionalProperties": False}


def _resource(api: str, kind: str, spec: dict, namespaced: bool = True) -> dict:
    meta = dict(_OBJECT_META, required=["name", "namespace"] if namespaced else ["name"])
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
            "properties": {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": meta, "spec": spec}}


def _strict(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STR = {"type": "string"}
_STR_LIST = {"type": "array", "items": _STR}
_SECRET_KEY_SELECTOR = _strict({"name": _STR, "key": _STR}, ("name",))
CRD_SCHEMAS = {
    # k3s-io/helm-controller, pkg/apis/helm.cattle.io/v1 (HelmChart CRD as shipped in k3s v1.35): spec fields.
    ("helm.cattle.io/v1", "HelmChart"): _resource("helm.cattle.io/v1", "HelmChart", _strict({
        "repo": _STR, "chart": _STR, "version": _STR, "targetNamespace": _STR, "valuesContent": _STR,
        "createNamespace": {"type": "boolean"}}, ("chart",))),
    ("helm.cattle.io/v1", "HelmChartConfig"): _resource("helm.cattle.io/v1", "HelmChartConfig", _strict({
        "valuesContent": _STR, "failurePolicy": _STR})),
    # metallb/metallb config/crd/bases/metallb.io_ipaddresspools.yaml and _l2advertisements.yaml, v0.15 (v1beta1).
    ("metallb.io/v1beta1", "IPAddressPool"): _resource("metallb.io/v1beta1", "IPAddressPool", _strict({
        "addresses": _STR_LIST, "autoAssign": {"type": "boolean"}, "avoidBuggyIPs": {"type": "boolean"}},
        ("addresses",))),
    ("metallb.io/v1beta1", "L2Advertisement"): _resource("metallb.io/v1beta1", "L2Advertisement", _strict({
        "ipAddressPools": _STR_LIST, "interfaces": _STR_LIST})),
    # cert-manager deploy/crds/crd-clusterissuers.yaml and crd-certificates.yaml, v1.18 (cert-manager.io/v1).
    ("cert-manager.io/v1", "ClusterIssuer"): _resource("cert-manager.io/v1", "ClusterIssuer", {
        "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False, "properties": {
            "selfSigned": _strict({}),
            "ca": _strict({"secretName": _STR}, ("secretName",)),
            "acme": _strict({
                "server": {"type": "string", "pattern": "^https://"}, "email": _STR,
                "privateKeySecretRef": _SECRET_KEY_SELECTOR,
                "solvers": {"type": "array", "items": _strict({
                    "http01": _strict({"ingress": _strict({"ingressClassName": _STR, "class": _STR})}),
                    "dns01": _strict({
                        "cloudflare": _strict({"apiTokenSecretRef": _SECRET_KEY_SELECTOR, "email": _STR}),
                        "digitalocean": _strict({"tokenSecretRef": _SECRET_KEY_SELECTOR}, ("tokenSecretRef",)),
                    }),
                })},
            }, ("server", "privateKeySecretRef"))}}, namespaced=False),
    ("cert-manager.io/v1", "Certificate"): _resource("cert-manager.io/v1", "Certificate", _strict({
        "isCA": {"type": "boolean"}, "commonName": _STR, "secretName": _STR, "duration": _STR,
        "privateKey": _strict({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"}}),
        "issuerRef": _strict({"name": _STR, "kind": _STR, "group": _STR}, ("name",)),
    }, ("secretName", "issuerRef"))),
    # rook/rook deploy/examples/crds.yaml, v1.17 (ceph.rook.io/v1): CephCluster and CephBlockPool.
    ("ceph.rook.io/v1", "CephCluster"): _resource("ceph.rook.io/v1", "CephCluster", _strict({
        "cephVersion": _strict({"image": _STR, "allowUnsupported": {"type": "boolean"}}),
        "dataDirHostPath": {"type": "string", "pattern": "^/(\\S+)"},
        "mon": _strict({"count": {"type": "integer", "minimum": 0, "maximum": 9},
                        "allowMultiplePerNode": {"type": "boolean"}}),
        "mgr": _strict({"count": {"type": "integer", "minimum": 0, "maximum": 5}}),
        "dashboard": _strict({"enabled": {"type": "boolean"}}),
        "storage": _strict({
            "useAllNodes": {"type": "boolean"}, "useAllDevices": {"type": "boolean"},
            "nodes": {"type": "array", "items": _strict({
                "name": _STR, "devices": {"type": "array", "items": _strict({"name": _STR}, ("name",))}}, ("name",))},
        }),
    })),
    ("ceph.rook.io/v1", "CephBlockPool"): _resource("ceph.rook.io/v1", "CephBlockPool", _strict({
        "failureDomain": _STR,
        "replicated": _strict({"size": {"type": "integer", "minimum": 0},
                               "requireSafeReplicaSize": {"type": "boolean"}}, ("size",)),
    })),
    # traefik/traefik-helm-chart traefik/crds/traefik.io_ingressroutetcps.yaml (Traefik v3, traefik.io/v1alpha1).
    ("traefik.io/v1alpha1", "IngressRouteTCP"): _resource("traefik.io/v1alpha1", "IngressRouteTCP", _strict({
        "entryPoints": _STR_LIST,
        "routes": {"type": "array", "items": _strict({
            "match": _STR, "services": {"type": "array", "items": _strict({
                "name": _STR, "port": {"type": ["integer", "string"]}}, ("name", "port"))}}, ("match",))},
    }, ("routes",))),
}


def test_kubernetes_validate_knows_the_pinned_k3s_kubernetes() -> None:
    assert KUBERNETES == "1.35.0"
    assert KUBERNETES in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("variant", ["home", "metallb+dns01", "backups"])
def test_every_manifest_parses_and_every_resource_is_valid(variant: str) -> None:
    documents = _documents(_variants()[variant])
    assert documents
    custom = 0
    for name, document in documents:
        key = (document["apiVersion"], document["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.validate(document, CRD_SCHEMAS[key])
            custom += 1
            for field in ("valuesContent",):
                if field in document["spec"]:
                    assert isinstance(yaml.safe_load(document["spec"][field]), dict), name
        else:
            assert "." not in key[0].split("/")[0] or key[0].split("/")[0].endswith("k8s.io"), (name, key)
            kubernetes_validate.validate(document, KUBERNETES, strict=True)
    assert custom >= 5


def test_helm_charts_are_pinned_from_versions() -> None:
    charts = [doc for _, doc in _documents(_variants()["metallb+dns01"]) if doc["kind"] == "HelmChart"]
    assert {doc["spec"]["chart"] for doc in charts} == {"metallb", "cert-manager", "rook-ceph", "jupyterhub"}
    for doc in charts:
        assert (doc["spec"]["repo"], doc["spec"]["version"]) == CHARTS[doc["spec"]["chart"]]


def test_every_app_of_the_catalog_is_deployed_with_tls_storage_and_resources() -> None:
    config = _home()
    manifests = _variants()["home"]
    seed = {"website", "projects", "blog", "emptypad", "privatebin", "kutt", "nextcloud", "gitea", "vaultwarden",
            "ntfy", "prometheus", "jupyterhub", "baikal", "minecraft"}
    assert {app.name for app in config.apps if app.deployed} == seed
    for app in config.apps:
        docs = {doc["kind"]: doc for _, doc in _documents({"x": manifests[f"portable-k3s-app-{app.name}.yaml"]})}
        if "Ingress" in docs:
            ingress = docs["Ingress"]
            assert ingress["spec"]["tls"][0]["hosts"] == [app.hostname]
            issuer = ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
            assert issuer == ("letsencrypt-production" if app.public else "portable-k3s-internal-ca"), app.name
        if "PersistentVolumeClaim" in docs:
            assert docs["PersistentVolumeClaim"]["spec"]["storageClassName"] == "ceph-block"
        if "Deployment" in docs:
            (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
            assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
            assert ":" in container["image"].rsplit("/", 1)[-1] and not container["image"].endswith(":latest")


def test_traefik_trusts_only_the_entrances_32s() -> None:
    (_, config), = _documents({"t": _variants()["metallb+dns01"]["portable-k3s-traefik-config.yaml"]})
    values = yaml.safe_load(config["spec"]["valuesContent"])
    assert (config["metadata"]["name"], config["metadata"]["namespace"]) == ("traefik", "kube-system")
    for port in ("web", "websecure"):
        for field in ("proxyProtocol", "forwardedHeaders"):
            assert values["ports"][port][field]["trustedIPs"] == [f"{ENTRANCE_IP}/32", "100.64.0.8/32"]
    assert values["ports"]["web"]["redirections"]["entryPoint"] == {"to": "websecure", "scheme": "https",
                                                                    "permanent": True}
    assert values["service"]["spec"]["externalTrafficPolicy"] == "Local"
    assert "100.64.0.0/10" not in str(values)


def test_traefik_on_every_node_with_host_ports_unless_the_entrance_targets_a_metallb_address() -> None:
    values = yaml.safe_load(_documents({"t": _variants()["home"]["portable-k3s-traefik-config.yaml"]})[0][1]["spec"][
        "valuesContent"])
    assert values["deployment"] == {"kind": "DaemonSet"}
    assert (values["ports"]["web"]["hostPort"], values["ports"]["websecure"]["hostPort"]) == (80, 443)
    assert values["ports"]["tcp25565"]["hostPort"] == 25565 and "proxyProtocol" not in values["ports"]["tcp25565"]


def test_the_entrance_whitelist_is_exactly_the_public_hostnames_and_private_ones_only_in_dns() -> None:
    config = _home()
    public = {app.hostname for app in config.apps if app.public}
    private = {app.hostname for app in config.apps if not app.public}
    nginx = render_entrance(config.apps, dict(ENTRANCE_DEFAULTS), ["100.64.0.2"])
    sni = re.search(r"map \$ssl_preread_server_name \$entrance_https_target \{(.*?)\}", nginx, re.S)
    assert sni, nginx[:500]
    whitelisted = {line.split()[0] for line in sni.group(1).strip().splitlines() if "cluster_https" in line}
    assert whitelisted == public
    assert not any(name in nginx for name in private)
    deploy = (REPO / "deploy.py").read_text()  # the records deploy.py gives headscale: the private apps' names
    assert "private = [app.hostname for app in cluster.private_apps() if app.hostname]" in deploy


# Bad inputs: each a clear error naming the key and what is valid


def _inventory(apps: list[dict], k3s: dict | None = None, **data: Any) -> Inventory:
    entrance = data.pop("entrance_data", {})
    base = {"domain": "example.org", "headscale_url": "https://headscale.example.org",
            "tailnet_domain": "tailnet.example.org", "apps": apps, **data}
    k3s = k3s or {"master": {"external_ssd": "/dev/sdb"}, "t420": {}, "t410": {}}
    servers = [("master", k3s["master"])]
    agents = [(name, value) for name, value in k3s.items() if name != "master"]
    return Inventory((["cloud", *k3s], base), headscale=(["cloud"], {}),
                     entrance=([("cloud", entrance)], {}),
                     k3s_servers=(servers, {}), k3s_agents=(agents, {}))


def _problems(inventory: Inventory) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        validate_inventory(inventory, require_secrets=False)
    return raised.value.problems


BLOG = {"name": "blog", "kind": "hugo", "hostname": "blog.example.org", "public": True}


def test_two_apps_on_one_hostname() -> None:
    assert _problems(_inventory([BLOG, {**BLOG, "name": "blog2"}])) == [
        "all.apps[1].hostname: 'blog.example.org' is also the hostname of apps[0] (expected a unique hostname per app)"]


def test_a_public_app_without_a_hostname() -> None:
    assert _problems(_inventory([{"name": "blog", "kind": "hugo", "public": True}])) == [
        "all.apps[0].hostname: is missing for a public app (expected a hostname the entrance lets in, like "
        "NAME.example.org)",
        "all.apps[0].hostname: is missing for an app served over https (expected the name it is served at, like "
        "NAME.example.org)",
    ]


def test_a_tcp_port_collision() -> None:
    mc = {"name": "minecraft", "hostname": "mc.example.org", "public": True, "tcp_port": 25565}
    assert _problems(_inventory([mc, {**mc, "name": "mc2", "hostname": "mc2.example.org"}])) == [
        "all.apps[1].tcp_port: 25565 is also the tcp_port of apps[0] (expected a unique tcp_port per app)"]


def test_rook_ceph_with_fewer_devices_than_replicas() -> None:
    assert _problems(_inventory([BLOG], rook_ceph=True)) == [
        "all.rook_ceph: 3 replicas but only 1 k3s node with an external_ssd; without one: t420, t410 "
        "(expected external_ssd on at least 3 k3s nodes, a smaller rook_ceph_replicas, or rook_ceph = False)"]
    assert _problems(_inventory([BLOG], rook_ceph=True, rook_ceph_replicas=2))[0].startswith(
        "all.rook_ceph_replicas: 2 replicas but only 1 k3s node with an external_ssd")
    validate_inventory(_inventory([BLOG], rook_ceph=True, rook_ceph_replicas=1))


def test_a_metallb_pool_with_no_route_from_the_entrance() -> None:
    entrance = {"entrance_upstream": "192.168.1.241", "tailscale_accept_routes": True}
    k3s = {"master": {"tailscale_advertise_routes": ["10.0.0.0/24"]}, "t420": {}, "t410": {}}
    problems = _problems(_inventory([BLOG], k3s, metallb_pools=["192.168.1.240/28"], entrance_data=entrance))
    assert ("all.metallb_pools[0]: 192.168.1.240/28 has no route to it from the entrance (no "
            "tailscale_advertise_routes subnet covers it) (expected a subnet that covers the whole pool in "
            "tailscale_advertise_routes of a node on that LAN, e.g. 192.168.1.0/24)") in problems
    routed = {"master": {"tailscale_advertise_routes": ["192.168.1.0/24"]}, "t420": {}, "t410": {}}
    config = validate_inventory(_inventory([BLOG], routed, metallb_pools=["192.168.1.240/28"],
                                           entrance_data=dict(entrance)), require_secrets=False)
    assert config.addons.lb_address == "192.168.1.241"
    values = yaml.safe_load(yaml.safe_load(render_manifests(config, [ENTRANCE_IP], _secret)[
        "portable-k3s-traefik-config.yaml"])["spec"]["valuesContent"])
    assert values["service"]["annotations"] == {"metallb.io/loadBalancerIPs": "192.168.1.241"}
    assert "deployment" not in values and "hostPort" not in values["ports"]["websecure"]


@pytest.mark.parametrize(("app", "expected"), [
    ({"name": "site", "kind": "container", "hostname": "site.example.org"},
     "all.apps[0].image: is missing for a container app (expected a container image with a pinned tag, like "
     "example/site:1.2.0)"),
    ({"name": "site", "kind": "container", "image": "example/site:latest", "hostname": "site.example.org"},
     "all.apps[0].image: 'example/site:latest' is not an image with a pinned tag (expected an image with a version "
     "tag or digest, like example/site:1.2.0 (not :latest))"),
    ({"name": "nextcloud", "hostname": "store.example.org"},
     "all.apps[0].secrets.admin_password: is missing for a nextcloud app (expected {\"env\": \"NAME\"} or "
     "{\"file\": \"PATH\"}; never a literal secret in group_data, e.g. {\"env\": \"NEXTCLOUD_ADMIN_PASSWORD\"})"),
    ({"name": "kutt", "hostname": "s.example.org", "secrets": {"jwt_secret": "hunter2"}},
     "all.apps[0].secrets.jwt_secret: is a literal secret (expected {\"env\": \"NAME\"} or {\"file\": \"PATH\"}; "
     "never a literal secret in group_data)"),
    ({"name": "blog", "kind": "wordpress", "hostname": "blog.example.org"},
     "all.apps[0].kind: 'wordpress' is not an app kind (expected one of container, static, hugo, privatebin, kutt, "
     "nextcloud, gitea, vaultwarden, ntfy, prometheus, jupyterhub, baikal, minecraft)"),
    ({"name": "site", "kind": "container", "image": "example/site:1.0", "hostname": "site.example.org",
      "storage": "10GB"}, "all.apps[0].storage: '10GB' is not a quantity (expected a size of at least 1Mi as "
         "Kubernetes writes it, like 10Gi, 512M or 1.5Gi)"),
    ({"name": "legacy", "hostname": "legacy.example.org", "image": "example/x:1.0"},
     "all.apps[0].image: is set, but the cluster does not run an app without a kind (expected a kind as well, "
     "one of container, static, hugo, privatebin, kutt, nextcloud, gitea, vaultwarden, ntfy, prometheus, "
     "jupyterhub, baikal, minecraft, or no image)"),
])
def test_bad_app_keys(app: dict, expected: str) -> None:
    assert _problems(_inventory([app])) == [expected]


def test_dns01_needs_a_provider_and_a_token() -> None:
    problems = _problems(_inventory([BLOG], acme_solver="dns01"))
    assert problems == [
        "all.dns01_provider: is missing while acme_solver is 'dns01' (expected one of cloudflare, digitalocean)",
        "all.dns01_token: is missing while acme_solver is 'dns01' (expected {\"env\": \"NAME\"} or {\"file\": "
        "\"PATH\"}; never a literal secret in group_data: the DNS provider's API token)",
    ]


def test_a_users_own_app_in_a_few_lines() -> None:
    app = {"name": "api", "kind": "container", "image": "example/api:2.3.1", "port": 8080, "hostname":
           "api.example.org", "public": True, "storage": "2Gi", "storage_path": "/var/lib/api",
           "env": {"MODE": "production"}, "secrets": {"API_KEY": {"env": "API_KEY"}},
           "resources": {"cpu": "200m", "memory": "512Mi"}}
    config = validate_inventory(_inventory([app]), require_secrets=False)
    docs = {doc["kind"]: doc for _, doc in _documents(render_manifests(config, [ENTRANCE_IP], _secret))
            if doc["metadata"].get("namespace") == "app-api"}
    assert docs["Secret"]["stringData"] == {"API_KEY": "value-of-all.apps[0].secrets.API_KEY"}
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "example/api:2.3.1" and container["ports"][0]["containerPort"] == 8080
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/api"}]
    assert {"name": "MODE", "value": "production"} in container["env"]
    assert docs["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "storageClassName" not in docs["PersistentVolumeClaim"]["spec"]  # no rook-ceph: the cluster's default
    assert ENTRANCE in config.hosts["cloud"].groups
