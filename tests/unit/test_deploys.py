"""Deploy wiring through the ``@fake`` connector: plan ``base_host`` for fake hosts whose facts come from
canned command output, run the operations, and check what would have been executed, in which order."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterable
from typing import Any

import pytest
from pyinfra.api import Config, Inventory, OperationError, OperationValueError, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops

from portable_k3s.deploys import base
from portable_k3s.deploys.base import DEFAULTS, base_host
from portable_k3s.operations import ssh, timesync
from portable_k3s.operations.util import PREFETCH_MARK
from portable_k3s.render import render, sha256
from tests.fake_connector import FakeConnector

SEP = "--portable-k3s--"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/01-portable-k3s-hardening.conf"
TIMESYNCD_DROPIN = "/etc/systemd/timesyncd.conf.d/portable-k3s.conf"
EXPECTED_OPS = [
    "Base host | Read the base state in one command",
    "Base host | Set the hostname",
    "Base host | Install base packages",
    "Base host | Configure time sync",
    "Base host | Harden sshd",
]
ALL_PACKAGES = [*DEFAULTS["base_packages"], "systemd-timesyncd"]

# The fact commands base_host runs (ours and pyinfra's), recognised by a pattern each.
FACT_COMMANDS = {
    "hostname": r"^v=; read -r v 2>/dev/null </proc/sys/kernel/hostname;",
    "hostnamectl": r"^command -v hostnamectl",
    "os": r"^uname -s$",
    "dpkg": r"\( dpkg-query -W ",
    "apt's dpkg": r"\( dpkg -l \)",  # apt.packages' own read, when it installs something
    "apt stamp": r"^! \(test -e /var/lib/apt/periodic/update-success-stamp",
    "timesyncd": r"^echo \"\$\{PORTABLE_K3S_MANAGER-",
    "timesyncd drop-in": r"^stat -c 'stat %a %U %G %n' -- /etc/systemd/timesyncd\.conf\.d/",
    "timesyncd unit": r"^systemctl show -p Id -p ActiveState -p UnitFileState -p ActiveEnterTimestampMonotonic "
                      r"-- systemd-timesyncd\.service",
    "sshd drop-in": r"^stat -c 'stat %a %U %G %n' -- /etc/ssh/sshd_config\.d/",
    "sshd": r"^grep -Eiq '\^\[\[:space:\]\]\*Include",
}


def _answer(*sections: Iterable[str] | str) -> str:
    """The output of a batched fact: one answer per section, separated by the marker line."""
    lines: list[str] = []
    for index, section in enumerate(sections):
        if index:
            lines.append(SEP)
        lines.extend([section] if isinstance(section, str) else section)
    return "\n".join(lines)


def _dpkg(packages: Iterable[str]) -> str:
    return "\n".join(f"ii  {name} 1.0-1" for name in packages)


def _dpkg_list(packages: Iterable[str]) -> str:
    """``dpkg -l``'s table, which pyinfra's ``DebPackages`` (read by ``apt.packages``) parses."""
    header = [
        "Desired=Unknown/Install/Remove/Purge/Hold",
        "||/ Name           Version      Architecture Description",
        "+++-==============-============-============-=================================",
    ]
    return "\n".join(header + [f"ii  {name}  1.0-1  amd64  the {name} package" for name in packages])


def _file_state(path: str, text: str) -> str:
    """``FileStates``' output for one file that holds ``text`` (mode 644, root's)."""
    return f"stat 644 root root {path}\n{sha256(text)}  {path}"


def _fresh_responses(hostname: str = "debian", keys: int = 1, user: str = "root") -> dict[str, str]:
    """A Debian host before the first deploy: default hostname, only some base packages, no drop-ins,
    timesyncd not installed, ``user`` logs in with ``keys`` keys."""
    return {
        FACT_COMMANDS["hostname"]: hostname,
        FACT_COMMANDS["hostnamectl"]: "/usr/bin/hostnamectl",
        FACT_COMMANDS["dpkg"]: _dpkg(["ca-certificates", "gnupg", "openssh-server"]),
        FACT_COMMANDS["apt's dpkg"]: _dpkg_list(["ca-certificates", "gnupg", "openssh-server"]),
        FACT_COMMANDS["timesyncd"]: "",
        FACT_COMMANDS["timesyncd unit"]: "Id=systemd-timesyncd.service\nActiveState=inactive\nUnitFileState=",
        FACT_COMMANDS["sshd"]: _answer("yes", user, str(keys)),
    }


def _converged_responses(hostname: str) -> dict[str, str]:
    """A host the deploy already converged: every answer says nothing is left to do."""
    timesyncd = render("timesyncd.conf.j2", servers=DEFAULTS["ntp_servers"], fallback=[])
    sshd = render("sshd_hardening.conf.j2", permit_root_login=DEFAULTS["ssh_permit_root_login"])
    return {
        FACT_COMMANDS["hostname"]: hostname,
        FACT_COMMANDS["hostnamectl"]: "/usr/bin/hostnamectl",
        FACT_COMMANDS["dpkg"]: _dpkg([*ALL_PACKAGES, "openssh-server"]),
        FACT_COMMANDS["timesyncd"]: "",
        FACT_COMMANDS["timesyncd drop-in"]: _file_state(timesync.TIMESYNCD_DROPIN, timesyncd),
        FACT_COMMANDS["timesyncd unit"]: "Id=systemd-timesyncd.service\nActiveState=active\nUnitFileState=enabled",
        FACT_COMMANDS["sshd drop-in"]: _file_state(ssh.HARDENING_DROPIN, sshd),
        FACT_COMMANDS["sshd"]: _answer("yes", "root", "2"),
    }


def _set_hostname(name: str) -> str:
    return (f"if command -v hostnamectl >/dev/null 2>&1 && hostnamectl set-hostname {name} 2>/dev/null; then :; "
            f"else echo {name} > /etc/hostname && hostname {name} ; fi")


def _plan(connector: type[FakeConnector], hosts: list[Any], responses: dict[str, str]) -> State:
    """Build an inventory of fake hosts, connect, and plan ``base_host`` on all of them."""
    connector.responses.update(responses)
    inventory = Inventory((hosts, {}))
    state = State(inventory, Config())
    connect_all(state)
    add_deploy(state, base_host)
    return state


def _op_names(state: State) -> list[str]:
    names = []
    for op_hash in state.get_op_order():
        (name,) = state.op_meta[op_hash].names
        names.append(name)
    return names


def _is_fact_command(entry: Any) -> bool:
    if not isinstance(entry, str):
        return False
    return PREFETCH_MARK in entry or any(re.search(p, entry) for p in FACT_COMMANDS.values())


def _changes(log: list[Any]) -> list[Any]:
    """Everything in a host's log that is not a fact command: the commands and uploads that change it."""
    return [entry for entry in log if not _is_fact_command(entry)]


def _index(entries: list[Any], predicate: Any) -> int:
    matches = [i for i, entry in enumerate(entries) if predicate(entry)]
    assert len(matches) == 1, f"expected exactly one match, got {len(matches)} in {entries}"
    return matches[0]


def test_every_operation_call_in_base_host_is_named() -> None:
    tree = ast.parse(inspect.getsource(base.base_host))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in {"hostname", "prefetch", "packages", "timesync", "ssh"}
    ]
    assert len(calls) == len(EXPECTED_OPS)
    for call in calls:
        names = [kw.value for kw in call.keywords if kw.arg == "name"]
        assert len(names) == 1 and isinstance(names[0], ast.Constant), ast.dump(call)


def test_fresh_host_plans_every_named_operation_as_a_change(fake_connector: type[FakeConnector]) -> None:
    state = _plan(fake_connector, [("@fake/node1", {"hostname": "node1"})], _fresh_responses())
    (host,) = state.inventory
    assert _op_names(state) == EXPECTED_OPS
    for index, op_hash in enumerate(state.get_op_order()):
        # A named operation's arguments are not attached to its name (they are never printed verbatim).
        assert state.op_meta[op_hash].args == []
        # The first one only reads the host's state (in one command), the others all change something.
        assert state.ops[host][op_hash].operation_meta.will_change is (index > 0)
    meta = state.get_meta_for_host(host)
    assert (meta.ops, meta.ops_change) == (5, 4)
    # Planning runs facts only.
    assert _changes(fake_connector.log[host.name]) == []


def test_fresh_host_runs_changes_in_order(fake_connector: type[FakeConnector]) -> None:
    state = _plan(fake_connector, [("@fake/node1", {"hostname": "node1"})], _fresh_responses())
    fake_connector.log.clear()
    run_ops(state)
    changes = _changes(fake_connector.log["@fake/node1"])

    missing = [name for name in ALL_PACKAGES if name not in ("ca-certificates", "gnupg")]
    install = (
        'DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::="--force-confdef" '
        '-o Dpkg::Options::="--force-confold" install --no-install-recommends ' + " ".join(missing)
    )
    sshd_install = _index(changes, lambda e: isinstance(e, str) and e.startswith("set -e;"))
    assert changes[:sshd_install] == [
        _set_hostname("node1"),
        "apt-get update",
        "touch /var/lib/apt/periodic/update-success-stamp",
        install,
        "mkdir -p /etc/systemd/timesyncd.conf.d",
        ("upload", TIMESYNCD_DROPIN),
        "systemctl enable systemd-timesyncd.service",
        "systemctl start systemd-timesyncd.service",
        ("upload", f"{SSHD_DROPIN}.portable-k3s-new"),
    ]
    assert changes[sshd_install + 1 :] == []

    # The staged drop-in is installed, tested with sshd -t, and sshd reloaded only after the test passed.
    script = changes[sshd_install]
    test_at = script.index("if ! sshd -t; then")
    reload_at = script.index("systemctl try-reload-or-restart ssh.service")
    assert script.index(f"install -m 0644 {SSHD_DROPIN}.portable-k3s-new {SSHD_DROPIN}") < test_at < reload_at
    assert script.index("exit 1; fi;", test_at) < reload_at
    assert script.count("systemctl") == 1


def test_converged_host_runs_only_fact_commands(fake_connector: type[FakeConnector]) -> None:
    state = _plan(fake_connector, [("@fake/node1", {"hostname": "node1"})], _converged_responses("node1"))
    (host,) = state.inventory
    meta = state.get_meta_for_host(host)
    assert (meta.ops, meta.ops_change, meta.ops_no_change) == (5, 0, 5)

    fake_connector.log.clear()
    run_ops(state)
    log = fake_connector.log[host.name]
    assert log, "the operations read their facts again when they run"
    assert _changes(log) == []
    assert not any(isinstance(entry, tuple) for entry in log)


def test_host_data_reaches_the_operations(fake_connector: type[FakeConnector]) -> None:
    hosts = [
        ("@fake/alpha", {"hostname": "alpha", "base_packages": ["vim"]}),
        ("@fake/beta", {}),  # no hostname data
    ]
    state = _plan(fake_connector, hosts, _fresh_responses(user="admin"))
    run_ops(state)
    alpha = _changes(fake_connector.log["@fake/alpha"])
    beta = _changes(fake_connector.log["@fake/beta"])
    assert alpha[0] == _set_hostname("alpha")
    assert beta[0].startswith("if command -v hostnamectl >/dev/null 2>&1 && hostnamectl set-hostname ")
    assert alpha[3].endswith("install --no-install-recommends vim systemd-timesyncd")
    assert beta[3].endswith(
        "install --no-install-recommends "
        + " ".join(name for name in ALL_PACKAGES if name not in ("ca-certificates", "gnupg"))
    )


def test_user_without_keys_refuses_to_plan(fake_connector: type[FakeConnector]) -> None:
    with pytest.raises(OperationError, match="has no key in ~root/.ssh/authorized_keys"):
        _plan(fake_connector, [("@fake/node1", {"hostname": "node1"})], _fresh_responses(keys=0))


def test_no_root_login_for_a_root_deploy_refuses_to_plan(fake_connector: type[FakeConnector]) -> None:
    hosts = [("@fake/node1", {"hostname": "node1", "ssh_permit_root_login": "no"})]
    with pytest.raises(OperationError, match="would lock out this deploy, which logs in as root"):
        _plan(fake_connector, hosts, _fresh_responses())


def test_no_root_login_for_a_sudo_deploy_is_planned(fake_connector: type[FakeConnector]) -> None:
    hosts = [("@fake/node1", {"hostname": "node1", "ssh_permit_root_login": "no"})]
    state = _plan(fake_connector, hosts, _fresh_responses(user="admin"))
    assert _op_names(state) == EXPECTED_OPS


def test_bad_permit_root_login_data_is_rejected(fake_connector: type[FakeConnector]) -> None:
    hosts = [("@fake/node1", {"hostname": "node1", "ssh_permit_root_login": "yes"})]
    with pytest.raises(OperationValueError, match="permit_root_login: 'yes'"):
        _plan(fake_connector, hosts, _fresh_responses())


def test_connector_host_without_hostname_data_is_named_after_its_target(
    fake_connector: type[FakeConnector],
) -> None:
    state = _plan(fake_connector, [("@fake/beta", {})], _fresh_responses())
    run_ops(state)
    assert _changes(fake_connector.log["@fake/beta"])[0] == _set_hostname("beta")
