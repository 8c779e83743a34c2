"""The settings registry (portable_k3s.settings): one declaration per key, and what is derived from it.

The deploys' defaults, the README's tables and the JSON Schema come from the registry; every key the library
reads is a setting with a check; the package has no import cycle; unknown keys that look meant for the library
are reported with the closest setting.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from portable_k3s import settings
from portable_k3s.config import ConfigError, load_inventory, validate_inventory
from portable_k3s.settings import SETTINGS, json_schema, markdown_tables, unknown_key_problem, with_tables
from portable_k3s.settings.core import SCOPES, located
from tests.unit.test_config import good_data, make_inventory, problems_of, with_data, with_groups

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "portable_k3s"

# Each deploy module and the name of its data_defaults.
DEPLOY_DEFAULTS = {
    "base": "DEFAULTS", "node_baseline": "DEFAULTS", "tailscale": "TAILSCALE_DEFAULTS",
    "headscale": "HEADSCALE_DEFAULTS", "entrance": "ENTRANCE_DEFAULTS", "alerts": "ALERTS_DEFAULTS",
    "k3s": "K3S_DEFAULTS", "cluster": "CLUSTER_DEFAULTS",
}


# The registry itself
#


def test_every_setting_is_declared_once_with_a_check_scope_and_documentation() -> None:
    names = [s.name for module, _ in settings.COMPONENTS for s in module.SETTINGS]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    for setting in SETTINGS.values():
        assert setting.scope in SCOPES, setting.name
        assert setting.doc and setting.read_on, setting.name
        assert callable(setting.type.check) and setting.type.schema, setting.name
        if not setting.required:
            assert located(setting.type.check(setting.default)) == [], f"{setting.name}'s default fails its check"


@pytest.mark.parametrize(("module", "name"), DEPLOY_DEFAULTS.items())
def test_the_deploys_defaults_come_from_the_registry(module: str, name: str) -> None:
    defaults = getattr(importlib.import_module(f"portable_k3s.deploys.{module}"), name)
    assert defaults, module
    for key, value in defaults.items():
        assert key in SETTINGS, f"{module}.{name} has {key}, which is not a setting"
        assert value == SETTINGS[key].default, key


def _keys_read(source: str) -> set[str]:
    """Data keys a module reads: ``data.KEY``, ``data.get("KEY")``, ``data["KEY"]``, and the config rules'
    ``_lookup(…, "KEY")`` / ``values.of(…, "KEY")``."""
    pattern = re.compile(
        r'\bdata\.(?!get\b|dict\b|items\b|keys\b|values\b|getvalue\b)([a-z][a-z0-9_]*)\b'
        r'|\bdata\.get\(\s*"([a-z0-9_]+)"|\bdata\[\s*"([a-z0-9_]+)"\s*\]'
        r'|_lookup\(inventory, \w+(?:\[0\])?, "([a-z0-9_]+)"\)'
        r'|values\.(?:of|valid|cluster)\((?:\w+(?:\[0\])?, )?"([a-z0-9_]+)"\)')
    return {next(group for group in match.groups() if group) for match in pattern.finditer(source)}


def test_every_key_the_library_reads_is_a_setting() -> None:
    # Not inventory keys: a kind's own field (``kind.data.sqlite``) and pyinfra's own connection data.
    not_settings = {"sqlite", "ssh_hostname"}
    read: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if {"lab", "settings"} & set(path.relative_to(PACKAGE).parts):
            continue
        for key in _keys_read(path.read_text()):
            read.setdefault(key, set()).add(str(path.relative_to(REPO)))
    assert len(read) > 60  # the scan found the reads
    unknown = {key: sorted(paths) for key, paths in read.items() if key not in SETTINGS and key not in not_settings}
    assert not unknown, unknown


def test_the_issues_unchecked_values_are_refused_naming_the_key() -> None:
    cases = {
        "entrance_connect_timeout": ("3s; } server { listen 9999", "is not a time"),
        "entrance_https_port": ("443", "'443' is a str"),
        "headscale_listen_addr": (12, "12 is an int"),
        "tailscale_download_url": ("ftp://x", "'ftp://x' is not a URL"),
        "headscale_download_url": ("https://example.org/x y", "is not a URL"),
        "entrance_fail_timeout": ("10 s", "is not a time"),
        "k3s_kubeconfig": ("  ", "is not a path"),
    }
    for key, (value, problem) in cases.items():
        lines = problems_of(with_data(**{key: value}))
        assert any(line.startswith(f"all.{key}: ") and problem in line for line in lines), (key, lines)


@pytest.mark.parametrize("value", ["3s", "500ms", "1m", "1m10s", 5])
def test_nginx_times_are_accepted(value: Any) -> None:
    assert problems_of(with_data(entrance_connect_timeout=value)) == []


@pytest.mark.parametrize("value", ["[::]:8080", "127.0.0.1:8080", "headscale.lan:443", ":8080"])
def test_listen_addresses_are_accepted(value: str) -> None:
    assert problems_of(with_data(headscale_listen_addr=value)) == []


def test_none_is_named_as_not_allowed() -> None:
    assert problems_of(with_data(k3s_drain_timeout=None)) == []  # None removes the key: its default applies
    data = good_data()
    data["k3s_drain_timeout"] = None
    assert problems_of(make_inventory(data=data)) == [
        "all.k3s_drain_timeout: None is not allowed (expected whole seconds 10-3600)"]


# Unknown keys
#


@pytest.mark.parametrize(("key", "problem"), [
    ("tailscale_acept_dns", "all.tailscale_acept_dns: is not a setting: did you mean tailscale_accept_dns? "
     "(expected tailscale_accept_dns, or a key of your own with another name)"),
    ("k3s_etcd_snapshots", "all.k3s_etcd_snapshots: is not a setting: did you mean k3s_etcd_snapshot_schedule? "
     "(expected k3s_etcd_snapshot_schedule, or a key of your own with another name)"),
])
def test_a_key_close_to_a_setting_is_refused_with_the_closest(key: str, problem: str) -> None:
    data = good_data()
    data[key] = True
    assert problems_of(make_inventory(data=data)) == [problem]


def test_a_key_with_the_librarys_prefix_is_refused_listing_its_settings() -> None:
    problem = unknown_key_problem("alerts_webhook")
    assert problem is not None and problem[0] == "is not a setting"
    assert "alerts_ntfy_url" in problem[1] and "alerts_retry" in problem[1]


@pytest.mark.parametrize("key", ["ssh_user", "ssh_port", "_sudo", "_sudo_user", "my_backup_host", "NAS_IP",
                                 "docker_image", "team"])
def test_pyinfras_and_foreign_keys_are_allowed(key: str) -> None:
    assert unknown_key_problem(key) is None
    data = good_data()
    data[key] = "x"
    assert problems_of(make_inventory(data=data)) == []


def test_unknown_keys_are_found_in_group_and_host_data_too() -> None:
    inventory = make_inventory(groups={
        "headscale": ([("cloud", {"ssh_hostname": "203.0.113.10", "tailscaled_prot": 41641})], {}),
        "entrance": (["cloud"], {"entrance_upsteam": "nodes"}),
        "k3s_servers": (["master"], {}),
    })
    assert problems_of(inventory) == [
        "cloud.tailscaled_prot: is not a setting: did you mean tailscaled_port? (expected tailscaled_port, or a key "
        "of your own with another name)",
        "entrance.entrance_upsteam: is not a setting: did you mean entrance_upstream? (expected entrance_upstream, "
        "or a key of your own with another name)",
    ]


# k3s_extra_config
#


@pytest.mark.parametrize(("flag", "instead"), [
    ("disable", "k3s_disable"), ("cluster-init", "k3s_cluster_init"), ("token", "k3s_token"),
    ("node-label", "k3s_node_labels"), ("etcd-s3-secret-key", "s3_secret_key"), ("private-registry", "k3s_registries"),
])
def test_extra_config_refuses_the_deploys_own_keys_naming_the_setting_to_use(flag: str, instead: str) -> None:
    lines = problems_of(with_data(k3s_extra_config={flag: "x"}))
    assert len(lines) == 1 and lines[0].startswith(f"all.k3s_extra_config.{flag}: is written by the deploy itself "
                                                   f"(expected {instead}")


def test_extra_config_secrets_are_references_only_and_read_when_deploying(monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems_of(with_data(k3s_extra_config={"agent-token": "K10literal"})) == [
        'all.k3s_extra_config.agent-token: is a literal secret (expected {"env": "NAME"} or {"file": "PATH"}; never '
        "a literal secret in group_data)"]
    assert problems_of(with_data(k3s_extra_config={"agent-token": {"env": "PK3S_AGENT_TOKEN"}}),
                       require_secrets=False) == []
    from portable_k3s.deploys.k3s import K3S_DEFAULTS, node_settings

    class Data(dict[str, Any]):
        def __getattr__(self, key: str) -> Any:
            return self.get(key)

    monkeypatch.setenv("PK3S_AGENT_TOKEN", "agent-secret")
    data = Data({**K3S_DEFAULTS, "k3s_extra_config": {"agent-token": {"env": "PK3S_AGENT_TOKEN"},
                                                      "kubelet-arg": ["max-pods=50"]}})
    found = node_settings(data, "server", first=True)
    assert found["agent-token"] == "agent-secret"
    assert found["kubelet-arg"] == ["max-pods=50"]
    assert found["disable"] == ["servicelb"] and found["cluster-init"] is True


def test_extra_config_values_are_flag_values() -> None:
    lines = problems_of(with_data(k3s_extra_config={"kubelet-arg": {"max-pods": 50}}))
    assert lines == ["all.k3s_extra_config.kubelet-arg: {'max-pods': 50} is not a flag value (expected a string, "
                     "number, True/False or a list of them, as k3s's config.yaml takes)"]


def test_the_owned_flags_cover_what_the_operation_writes() -> None:
    from portable_k3s.operations.k3s import MANAGED_KEYS
    from portable_k3s.settings.k3s import OWNED_FLAGS

    assert set(MANAGED_KEYS) <= set(OWNED_FLAGS)
    for instead in OWNED_FLAGS.values():
        assert instead.split()[0].rstrip(",") in SETTINGS or instead.startswith("the order of"), instead


# Quantities, versions, address plans, roles
#


@pytest.mark.parametrize(("resource", "value"), [
    ("storage", "512M"), ("storage", "1.5Gi"), ("storage", "10Gi"), ("storage", "2e9"), ("cpu", "100m"),
    ("cpu", "0.5"), ("cpu", "2"), ("memory", "512M"), ("memory", "1.5Gi"), ("memory", "256Mi"),
])
def test_kubernetes_quantities_are_accepted_as_kubernetes_writes_them(resource: str, value: str) -> None:
    app = {"name": "site", "kind": "container", "image": "example/site:1.0", "hostname": "site.example.org"}
    if resource == "storage":
        app["storage"] = value
    else:
        app["resources"] = {resource: value}
    data = good_data()
    data["apps"] = [app]
    assert problems_of(make_inventory(data=data)) == []


@pytest.mark.parametrize(("resource", "value", "problem"), [
    ("storage", "10GB", "'10GB' is not a quantity"), ("memory", "100m", "'100m' is less than the smallest memory"),
    ("cpu", "0.0001", "'0.0001' is less than the smallest cpu"), ("storage", "-1Gi", "'-1Gi' is not a quantity"),
])
def test_bad_quantities_are_named(resource: str, value: str, problem: str) -> None:
    app: dict[str, Any] = {"name": "site", "kind": "container", "image": "example/site:1.0",
                           "hostname": "site.example.org"}
    if resource == "storage":
        app["storage"] = value
        where = "all.apps[0].storage"
    else:
        app["resources"] = {resource: value}
        where = f"all.apps[0].resources.{resource}"
    data = good_data()
    data["apps"] = [app]
    lines = problems_of(make_inventory(data=data))
    assert len(lines) == 1 and lines[0].startswith(f"{where}: {problem}"), lines


def test_the_tailscale_client_range_follows_the_pinned_headscale(monkeypatch: pytest.MonkeyPatch) -> None:
    from portable_k3s import versions

    assert problems_of(with_data(versions={"tailscale": "1.70.0"})) == [
        "all.versions.tailscale: '1.70.0' is not a client headscale 0.29.2 accepts (expected a tailscale version "
        "from 1.80 to 1.98)"]
    monkeypatch.setitem(versions.HEADSCALE_CLIENTS, "0.30", ("1.86", "1.100"))
    assert problems_of(with_data(versions={"headscale": "0.30.0", "tailscale": "1.100.1"})) == []
    assert problems_of(with_data(versions={"headscale": "0.30.0", "tailscale": "1.84.0"})) == [
        "all.versions.tailscale: '1.84.0' is not a client headscale 0.30.0 accepts (expected a tailscale version "
        "from 1.86 to 1.100)"]
    assert problems_of(with_data(versions={"headscale": "0.31.0"})) == [
        "all.versions.headscale: '0.31.0' is a headscale release this library has not been checked with (expected "
        "a headscale release of 0.29.x, 0.30.x)"]


@pytest.mark.parametrize(("data", "problem"), [
    ({"metallb_pools": ["192.168.1.240/28", "192.168.1.248-192.168.1.250"]},
     "all.metallb_pools[1]: 192.168.1.248-192.168.1.250 overlaps metallb_pools[0] 192.168.1.240/28 (expected pools "
     "that share no address)"),
    ({"metallb_pools": ["100.64.10.0/28"]},
     "all.metallb_pools[0]: 100.64.10.0/28 overlaps the tailnet 100.64.0.0/10 (expected LAN addresses outside the "
     "tailnet (100.64.0.0/10) and the cluster's pod and service networks)"),
    ({"metallb_pools": ["10.42.7.0/28"]},
     "all.metallb_pools[0]: 10.42.7.0/28 overlaps cluster-cidr 10.42.0.0/16 (expected LAN addresses outside the "
     "tailnet (100.64.0.0/10) and the cluster's pod and service networks)"),
    ({"k3s_extra_config": {"service-cidr": "100.100.0.0/16"}},
     "all.k3s_extra_config.service-cidr: 100.100.0.0/16 overlaps the tailnet 100.64.0.0/10 (expected a private "
     "network outside 100.64.0.0/10, like k3s's default 10.43.0.0/16)"),
    ({"tailscale_advertise_routes": ["10.42.0.0/24"]},
     "all.tailscale_advertise_routes: 10.42.0.0/24 overlaps the cluster's cluster-cidr 10.42.0.0/16 (expected a "
     "LAN outside the cluster's networks, or another cluster-cidr in k3s_extra_config)"),
])
def test_address_plans_that_overlap_are_refused(data: dict[str, Any], problem: str) -> None:
    assert problem in problems_of(with_data(**data))


def test_a_host_that_is_an_entrance_and_a_k3s_node_is_refused() -> None:
    lines = problems_of(with_groups(entrance=(["cloud", "master"], {})))
    assert lines == [
        "master: is in entrance and in k3s_servers: Traefik's host ports 80 and 443 on a k3s node would take the "
        "public traffic before nginx's SNI whitelist, and private apps would answer the internet (expected the "
        "entrance on a host that is not a k3s node, like a small cloud VM)"]


# Derived: README tables, JSON Schema
#


def test_the_readmes_tables_are_the_registrys() -> None:
    readme = (REPO / "README.md").read_text()
    assert with_tables(readme) == readme, "run: python -m portable_k3s settings --readme README.md"
    for name in SETTINGS:
        assert f"| `{name}` |" in readme, name


def test_the_markdown_has_one_row_per_setting() -> None:
    rows = [line for line in markdown_tables().splitlines() if line.startswith("| `")]
    assert sorted(row.split("`")[1] for row in rows) == sorted(SETTINGS)


def _data_layers(inventory: Any) -> list[tuple[str, dict[str, Any]]]:
    layers = [("all", inventory.get_data() or {})]
    layers += [(group, inventory.get_group_data(group) or {}) for group in inventory.groups]
    layers += [(host.name, inventory.get_host_data(host.name) or {}) for host in inventory]
    return layers


def test_the_json_schema_is_valid_and_validates_the_shipped_inventory() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    inventory = load_inventory(str(REPO / "inventories" / "home.py"), cwd=str(REPO))
    validate_inventory(inventory, require_secrets=False, cwd=str(REPO))
    checked = 0
    for source, data in _data_layers(inventory):
        ours = {key: value for key, value in data.items() if key in SETTINGS}
        errors = [f"{source}.{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(ours)]
        assert not errors, errors
        checked += len(ours)
    assert checked > 15


@pytest.mark.parametrize(("key", "value"), [
    ("entrance_https_port", "443"), ("tailscale_mtu", 1500), ("acme_issuer", "letsencrypt"),
    ("k3s_token", "literal"), ("app_backup_keep", {"daily": 0}), ("firmware_policy", {"require_coreboot": "maybe"}),
])
def test_the_json_schema_refuses_what_the_checks_refuse(key: str, value: Any) -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    assert list(validator.iter_errors({key: value})), key
    assert problems_of(with_data(**{key: value})), key


def test_the_settings_command_prints_the_schema_and_the_tables() -> None:
    run = subprocess.run([sys.executable, "-m", "portable_k3s", "settings", "--schema"], capture_output=True,
                         text=True, timeout=60, cwd=REPO, check=True)
    token = json.loads(run.stdout)["properties"]["k3s_token"]
    assert {"type": "null"} in token["anyOf"] and token["anyOf"][0]["oneOf"]
    run = subprocess.run([sys.executable, "-m", "portable_k3s", "settings"], capture_output=True, text=True,
                         timeout=60, cwd=REPO, check=True)
    assert run.stdout.rstrip("\n") == markdown_tables().rstrip("\n")


# The import graph
#


def _imports(path: Path, module: str) -> set[str]:
    """The package modules ``module`` imports at run time (any depth of the file, ``TYPE_CHECKING`` blocks
    excepted); ``from . import x`` names the module ``x``, not the package."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_the_package_has_no_import_cycle() -> None:
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        named = _imports(path, module) & set(modules)
        # ``from pkg import mod`` depends on ``pkg.mod``; on ``pkg`` only for a name that is not a module
        graph[module] = {name for name in named if name != module and not any(
            other.startswith(f"{name}.") and other in named for other in named)}
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str], done: set[str]) -> None:
        for dependency in sorted(graph[node]):
            if dependency in path:
                cycles.append(path[path.index(dependency):] + [dependency])
            elif dependency not in done:
                walk(dependency, [*path, dependency], done)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            walk(module, [module], done)
    assert len(graph) > 70
    assert not cycles, cycles[:5]


def test_importing_the_settings_loads_no_deploy_operation_or_fact() -> None:
    code = ("import sys, portable_k3s.settings; print(sorted(m for m in sys.modules if m.startswith('portable_k3s.')"
            " and not m.startswith(('portable_k3s.settings', 'portable_k3s.versions', 'portable_k3s.schedule'))))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                         check=True)
    assert run.stdout.strip() == "[]"


def test_the_problem_format_holds_for_every_new_refusal() -> None:
    inventory = with_data(entrance_https_port="443", tailscale_acept_dns=True, k3s_extra_config={"disable": []},
                          metallb_pools=["100.64.0.0/28"])
    error = pytest.raises(ConfigError, validate_inventory, inventory).value
    assert all(re.match(r"^\S+: .+ \(expected .+\)$", line) for line in error.problems), error.problems
    assert yaml.safe_dump(error.problems)  # plain strings


def test_the_readmes_app_catalog_names_every_app_key_and_kind() -> None:
    from portable_k3s.settings.apps import APP_KEYS, KINDS

    readme = (REPO / "README.md").read_text()
    catalog = readme[readme.index("\n### App catalog\n"):]
    catalog = catalog[:catalog.index("\n### ", 5)]
    assert [key for key in APP_KEYS if f"`{key}`" not in catalog] == []
    assert [kind for kind in KINDS if f"| `{kind}` |" not in catalog] == []
