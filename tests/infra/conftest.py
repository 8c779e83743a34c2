"""The infra tier: testinfra checks against LIVE hosts, listed by a pyinfra inventory (no second host list).

    pytest tests/infra --inventory inventories/home.py

Each test asks for ``host`` (a testinfra host) and may limit itself to groups with
``@pytest.mark.groups("k3s_servers", ...)``; it then runs once per host of those groups.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra

from portable_k3s.config import load_inventory
from portable_k3s.deploys.base import DEFAULTS as BASE_DEFAULTS

REPO = Path(__file__).resolve().parents[2]


@dataclass
class InventoryHost:
    name: str
    groups: frozenset[str]
    data: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--inventory", default=None, help="pyinfra inventory file whose hosts are checked")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "groups(*names): run only for hosts in these inventory groups")


def _inventory_hosts(path: str) -> list[InventoryHost]:
    inventory = load_inventory(path, cwd=str(REPO))
    hosts = []
    for host in inventory:
        data = {key: host.data.get(key) for key in host.data.dict()}
        hosts.append(InventoryHost(host.name, frozenset(g.name if hasattr(g, "name") else g for g in host.groups),
                                   data))
    return hosts


def _ssh_config(hosts: list[InventoryHost]) -> str:
    """An OpenSSH config equivalent to the inventory's pyinfra SSH data."""
    lines = []
    for h in hosts:
        lines += [f"Host {h.name}", f"  HostName {h.get('ssh_hostname') or h.name}"]
        if h.get("ssh_user"):
            lines.append(f"  User {h.get('ssh_user')}")
        if h.get("ssh_port"):
            lines.append(f"  Port {h.get('ssh_port')}")
        if h.get("ssh_key"):
            lines += [f"  IdentityFile {h.get('ssh_key')}", "  IdentitiesOnly yes"]
        if h.get("ssh_known_hosts_file"):
            lines.append(f"  UserKnownHostsFile {h.get('ssh_known_hosts_file')}")
        if h.get("ssh_strict_host_key_checking"):
            lines.append(f"  StrictHostKeyChecking {h.get('ssh_strict_host_key_checking')}")
        lines += ["  BatchMode yes", "  ConnectTimeout 10", ""]
    return "\n".join(lines)


_STATE: dict[str, Any] = {}


def _setup(config: pytest.Config) -> tuple[list[InventoryHost], str]:
    if "hosts" not in _STATE:
        path = config.getoption("--inventory")
        if not path:
            raise pytest.UsageError("tests/infra needs --inventory INVENTORY (e.g. inventories/home.py)")
        hosts = _inventory_hosts(path)
        fd, ssh_config = tempfile.mkstemp(prefix="portable-k3s-infra-", suffix=".ssh_config")
        with os.fdopen(fd, "w") as f:
            f.write(_ssh_config(hosts))
        _STATE.update(hosts=hosts, ssh_config=ssh_config)
    return _STATE["hosts"], _STATE["ssh_config"]


def pytest_unconfigure(config: pytest.Config) -> None:
    if "ssh_config" in _STATE:
        os.unlink(_STATE["ssh_config"])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "host" not in metafunc.fixturenames:
        return
    hosts, _ = _setup(metafunc.config)
    marker = metafunc.definition.get_closest_marker("groups")
    wanted = set(marker.args) if marker else None
    selected = [h for h in hosts if wanted is None or h.groups & wanted]
    metafunc.parametrize("inventory_host", selected, ids=[h.name for h in selected], indirect=True)


@pytest.fixture
def inventory_host(request: pytest.FixtureRequest) -> InventoryHost:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def base_data(inventory_host: InventoryHost) -> dict[str, Any]:
    """The base deploy's data for this host, with its defaults filled in."""
    return {key: inventory_host.get(key, default) for key, default in BASE_DEFAULTS.items()}


@pytest.fixture
def host(inventory_host: InventoryHost, pytestconfig: pytest.Config):
    _, ssh_config = _setup(pytestconfig)
    return testinfra.get_host(f"ssh://{inventory_host.name}", ssh_config=ssh_config, controlpersist=60)
