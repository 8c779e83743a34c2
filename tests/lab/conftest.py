"""The lab tier: one lab of real Debian hosts (systemd-nspawn) for the whole session, always torn down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from portable_k3s.lab import Lab, LabConfig
from portable_k3s.lab.apps import ca_dir, serve_apps
from portable_k3s.lab.s3 import start_s3

from .public import PUBLIC

REPO = Path(__file__).resolve().parents[2]

# Its own names, subnets and state dir, so the tests never touch a lab brought up by hand. Two test runs on one
# machine need different PORTABLE_K3S_TEST_LAB_ID values (1-9, default 1).
LAB_ID = int(os.environ.get("PORTABLE_K3S_TEST_LAB_ID", "1"))
assert 1 <= LAB_ID <= 9, "PORTABLE_K3S_TEST_LAB_ID must be 1-9"
TEST_LAB = {
    "state_dir": f"/var/lib/portable-k3s/lab-test{LAB_ID}",
    "cloud_bridge": f"pk3slabt{LAB_ID}-cloud",
    "home_bridge": f"pk3slabt{LAB_ID}-home",
    "cloud_subnet": f"10.231.{10 * LAB_ID + 1}.0/24",
    "home_subnet": f"10.231.{10 * LAB_ID + 2}.0/24",
    "artifact_port": 8780 + LAB_ID,
}
# Where the home site moves to when a test moves house, and its NAT's new address on the cloud site (subnet + 2).
MOVED_HOME_SUBNET = f"10.231.{10 * LAB_ID + 3}.0/24"
MOVED_HOME_PUBLIC_INDEX = 2


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "moves_lab: moves or rebuilds lab hosts; runs after every other lab test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("moves_lab") is not None)  # stable: keeps file order
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="the lab tier needs root (systemd-nspawn, bridges, iptables, overlayfs)")
        for item in items:
            if "tests/lab" in str(item.fspath):
                item.add_marker(skip)


@dataclass
class PyinfraRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def results(self) -> dict:
        return json.loads(self.stdout)["results"]  # type: ignore[no-any-return]

    def changed(self) -> dict[str, list[str]]:
        """{operation name: [hosts where it changed something]} for operations that changed anything."""
        return {op["name"]: op["success"] for op in self.results["operations"] if op["success"]}


@pytest.fixture(scope="session")
def lab(pytestconfig: pytest.Config) -> Iterator[Lab]:
    lab = Lab(LabConfig.from_env(**TEST_LAB))
    lab.down()  # leftovers of a crashed run
    try:
        # Shown as they happen: the first run on a machine builds the lab's release files for minutes.
        with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            lab.up(4)
            start_s3(lab)  # the off-site store of the lab's backups, on h1, as `lab up` starts it
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="session")
def lab_env(lab: Lab) -> dict[str, str]:
    return {**os.environ, "PORTABLE_K3S_LAB_STATE_DIR": str(lab.state_dir)}


@pytest.fixture(scope="session")
def pyinfra(lab_env: dict[str, str]):
    """Run the real pyinfra CLI from the repo root against the lab inventory, with JSON results."""

    def run(*args: str, inventory: str = "inventories/lab.py", deploy: str = "deploy.py") -> PyinfraRun:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("pyinfra")), inventory, deploy, "-y", "--json", *args],
            cwd=REPO, env=lab_env, capture_output=True, text=True, timeout=900,
        )
        return PyinfraRun(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture(scope="session")
def served_apps(lab, converged_entrance) -> Path:
    """The deployed apps served for real: certificates from the lab's CA in the Secrets their Ingresses name, a
    first page in each static app's volume (``portable_k3s.lab.apps``); the CA's directory (``ca.pem``)."""
    issued = serve_apps(lab)
    assert PUBLIC in issued or issued == [], issued
    return ca_dir(lab)


@pytest.fixture(scope="session")
def converged_entrance(pyinfra):
    run = pyinfra()
    assert run.returncode == 0, run.stderr[-4000:]
    return run
