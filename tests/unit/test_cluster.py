"""The cluster add-ons deploy through the ``@fake`` connector: on the first server it writes every manifest 0600 into
k3s's auto-deploy directory (Traefik's trusting the entrance's real tailnet address, read at deploy time), removes
the manifests no longer rendered with their resources, shows no secret anywhere but in the uploads, and changes
nothing on a converged server. Also ``traefik_config`` against other hosts' facts, and the render command."""

from __future__ import annotations

import ast
import inspect
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.operations import parse_commands
from pyinfra_testing.util import FakeState

from portable_k3s.config import validate_inventory
from portable_k3s.deploys import cluster as cluster_deploy
from portable_k3s.deploys.cluster import cluster_addons, read_secret
from portable_k3s.facts.util import SEPARATOR
from portable_k3s.manifests import MANIFEST_DIR, render_manifests
from portable_k3s.operations import cluster
from portable_k3s.operations.util import PREFETCH_MARK
from portable_k3s.render import sha256
from tests.callbacks import host_failure, named_host
from tests.fake_connector import FakeConnector

REPO = Path(__file__).resolve().parents[2]
ENTRANCE_IP = "100.64.0.9"
PASSWORD = "correct-horse-battery-staple"  # noqa: S105 - a test secret, looked for in every command
APPS = [
    {"name": "blog", "kind": "hugo", "hostname": "blog.example.org", "public": True},
    {"name": "nextcloud", "hostname": "store.example.org", "public": True,
     "secrets": {"admin_password": {"env": "TEST_NEXTCLOUD_PASSWORD"}}},
    {"name": "minecraft", "hostname": "mc.example.org", "public": True, "tcp_port": 25565, "proxy_protocol": False},
]


def _inventory(apps: list[dict] | None = None) -> Inventory:
    data = {"domain": "example.org", "headscale_url": "https://headscale.example.org",
            "tailnet_domain": "tailnet.example.org", "apps": APPS if apps is None else apps}
    return Inventory(
        (["@fake/master", "@fake/cloud"], data),
        headscale=([("@fake/cloud", {"hostname": "cloud"})], {}), entrance=(["@fake/cloud"], {}),
        k3s_servers=([("@fake/master", {"hostname": "master"})], {}),
    )


def _tailscale_answer(ipv4: str) -> str:
    status = {"BackendState": "Running", "Self": {"TailscaleIPs": [ipv4], "DNSName": "cloud.tailnet.example.org."}}
    return "\n".join([json.dumps(status), SEPARATOR, "{}"])


def _expected(apps: list[dict] | None = None) -> dict[str, str]:
    config = validate_inventory(_inventory(apps))
    return render_manifests(config, [ENTRANCE_IP], read_secret)


def _plan(connector: type[FakeConnector], responses: dict[str, str], apps: list[dict] | None = None) -> State:
    connector.responses.update({r"tailscale status --json": _tailscale_answer(ENTRANCE_IP), **responses})
    inventory = _inventory(apps)
    state = State(inventory, Config())
    connect_all(state)
    config = validate_inventory(inventory)
    master = inventory.get_host("@fake/master")
    add_deploy(state, cluster_addons, config=config, entrances=inventory.get_group("entrance"), host=master)
    return state


def _file_states(manifests: dict[str, str]) -> str:
    """What the FileStates command prints for these manifests: stat lines, then sha256sum lines."""
    stats = [f"stat 600 root root {MANIFEST_DIR}/{name}" for name in manifests]
    sums = [f"{sha256(text)}  {MANIFEST_DIR}/{name}" for name, text in manifests.items()]
    return "\n".join(stats + sums)


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_NEXTCLOUD_PASSWORD", PASSWORD)


def test_every_operation_call_in_the_deploy_is_named() -> None:
    tree = ast.parse(inspect.getsource(cluster_deploy.cluster_addons))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Name) and node.func.value.id in {"cluster", "files"}]
    assert len(calls) == 3
    assert all(any(kw.arg == "name" for kw in call.keywords) for call in calls)


def test_first_run_writes_every_manifest_0600_and_removes_a_dropped_one(fake_connector: type[FakeConnector]) -> None:
    expected = _expected()
    stale = "portable-k3s-app-kutt.yaml"
    state = _plan(fake_connector, {r"portable-k3s-\*\.yaml": f"{stale}\nportable-k3s-cert-manager.yaml"})
    fake_connector.log.clear()
    run_ops(state)
    log = fake_connector.log["@fake/master"]
    uploads = [entry[1] for entry in log if isinstance(entry, tuple)]
    assert sorted(uploads) == sorted(
        f"{MANIFEST_DIR}/.{name.removesuffix('.yaml')}.portable-k3s-new.yaml" for name in expected
    )
    commands = [entry for entry in log if isinstance(entry, str)]
    installs = [c for c in commands if "/dev/null" in c and "portable-k3s-new" in c]
    assert len(installs) == len(expected) and all("install -m 0600 -o root -g root" in c for c in installs)
    removal = [c for c in commands if "kubectl delete" in c]
    assert removal == [
        f"if [ -e {MANIFEST_DIR}/{stale} ]; then mv -f {MANIFEST_DIR}/{stale} "
        f"{MANIFEST_DIR}/.portable-k3s-app-kutt.removing.yaml ; fi && k3s kubectl delete --ignore-not-found "
        f"--wait=false -f {MANIFEST_DIR}/.portable-k3s-app-kutt.removing.yaml && k3s kubectl delete "
        "--ignore-not-found --wait=false -n kube-system addon portable-k3s-app-kutt && rm -f "
        f"{MANIFEST_DIR}/.portable-k3s-app-kutt.removing.yaml"
    ]
    assert not any(PASSWORD in c for c in commands), "a secret reached a command line"
    names = {name for meta in state.op_meta.values() for name in meta.names}
    assert "Cluster add-ons | Traefik config: PROXY protocol from the entrances only" in names
    assert "Cluster add-ons | Manifest portable-k3s-app-nextcloud.yaml" in names
    assert all(meta.args == [] for meta in state.op_meta.values())  # named: arguments (texts) never printed


def test_traefik_trusts_the_entrances_address_read_at_deploy_time(fake_connector: type[FakeConnector]) -> None:
    config = validate_inventory(_inventory())
    state = FakeState()
    entrance = named_host(state, "cloud", {"tailscale.Tailscale": {"ipv4": ENTRANCE_IP}})
    path = f"{MANIFEST_DIR}/portable-k3s-traefik-config.yaml"
    master = named_host(state, "master", {"files.FileStates": {f"paths=('{path}',)": {path: None}}})
    from functools import partial

    from portable_k3s.manifests.traefik import render_traefik

    render = partial(render_traefik, addons=config.addons, apps=config.apps)
    with ctx_state.use(state), ctx_host.use(master):
        commands = parse_commands(list(cluster.traefik_config._inner(render_config=render, entrances=[entrance],
                                                                      path=path)))
    upload = next(c for c in commands if isinstance(c, list) and c[0] == "upload")
    values = yaml.safe_load(yaml.safe_load(upload[1])["spec"]["valuesContent"])
    assert values["ports"]["websecure"]["proxyProtocol"]["trustedIPs"] == [f"{ENTRANCE_IP}/32"]
    assert "install -m 0600" in commands[0]


def test_traefik_config_refuses_to_execute_without_an_entrance_address() -> None:
    state = FakeState()
    state.is_executing = True
    entrance = named_host(state, "cloud", {"tailscale.Tailscale": {"ipv4": None}})
    master = named_host(state, "master", {})
    with ctx_state.use(state), ctx_host.use(master):
        commands = list(cluster.traefik_config._inner(render_config=str, entrances=[entrance]))
    assert host_failure(commands).startswith("cloud has no tailnet IPv4: Traefik would trust no entrance")


def test_second_run_changes_nothing(fake_connector: type[FakeConnector]) -> None:
    expected = _expected()
    listing = "\n".join(expected)
    state = _plan(fake_connector, {r"^stat -c .* /var/lib/rancher": _file_states(expected),
                                   r"portable-k3s-\*\.yaml": listing})
    (master,) = [h for h in state.inventory if h.name == "@fake/master"]
    meta = state.get_meta_for_host(master)
    assert meta.ops_change == 0 and meta.ops == 1 + len(expected) + 1  # the read, the manifests, the pruning
    fake_connector.log.clear()
    run_ops(state)
    assert not any(isinstance(entry, tuple) or "kubectl" in entry for entry in fake_connector.log["@fake/master"])
    # The manifests' states and the listing are asked for in one command first (the fake connector does not
    # answer that combined command, so the operations then read them one by one).
    first = fake_connector.log["@fake/master"][0]
    assert PREFETCH_MARK in first and "for f in portable-k3s-*.yaml" in first
    assert all(f"{MANIFEST_DIR}/{name}" in first for name in expected)


def test_removing_an_app_from_the_catalog_removes_its_manifest(fake_connector: type[FakeConnector]) -> None:
    before = _expected()
    after_apps = [app for app in APPS if app["name"] != "blog"]
    after = _expected(after_apps)
    assert set(before) - set(after) == {"portable-k3s-app-blog.yaml"}
    state = _plan(fake_connector, {r"^stat -c .* /var/lib/rancher": _file_states(before),
                                   r"portable-k3s-\*\.yaml": "\n".join(before)}, after_apps)
    fake_connector.log.clear()
    run_ops(state)
    changes = [e for e in fake_connector.log["@fake/master"] if isinstance(e, tuple) or "kubectl" in e]
    # Traefik's config changes only if an entry point went away; here only the blog's file goes, with its objects.
    assert len(changes) == 1 and "addon portable-k3s-app-blog" in changes[0]


def test_render_command_writes_every_manifest_with_placeholders(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("KUTT_JWT_SECRET", "NEXTCLOUD_ADMIN_PASSWORD", "JUPYTERHUB_PASSWORD"):
        env.pop(name, None)  # render never reads a secret
    run = subprocess.run([sys.executable, "-m", "portable_k3s", "render", "inventories/home.py", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "ENTRANCE-TAILNET-IP-OF-cloud" in run.stdout
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "portable-k3s-traefik-config.yaml" in files and "portable-k3s-app-minecraft.yaml" in files
    traefik = (tmp_path / "portable-k3s-traefik-config.yaml").read_text()
    assert "ENTRANCE-TAILNET-IP-OF-cloud/32" in traefik and "100.64.0.0/10" not in traefik
    nextcloud = (tmp_path / "portable-k3s-app-nextcloud.yaml").read_text()
    assert "SECRET-FROM-all.apps[6].secrets.admin_password" in nextcloud
    given = subprocess.run([sys.executable, "-m", "portable_k3s", "render", "inventories/home.py", str(tmp_path),
                            "--entrance-ip", "100.64.0.5"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=60)
    assert given.returncode == 0, given.stderr
    assert "100.64.0.5/32" in (tmp_path / "portable-k3s-traefik-config.yaml").read_text()
    assert stat.S_ISREG((tmp_path / "portable-k3s-cert-manager.yaml").stat().st_mode)


def test_a_deploy_without_the_secret_stops_before_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_NEXTCLOUD_PASSWORD")
    problems = []
    try:
        validate_inventory(_inventory())
    except Exception as error:  # noqa: BLE001 - the ConfigError's lines
        problems = getattr(error, "problems", [])
    assert problems == ["all.apps[1].secrets.admin_password: environment variable TEST_NEXTCLOUD_PASSWORD is not set "
                        "(expected the secret in $TEST_NEXTCLOUD_PASSWORD when deploying)"]
