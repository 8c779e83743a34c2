"""k3s operations that need another inventory host (the server a node joins, copies its token from, or is
drained through), which a pyinfra-testing case file cannot express; their execution-time functions are run here
against mocked connections. Also the config model's k3s keys and the deploy's pure helpers."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any
from unittest import mock

import gevent
import pytest
import yaml
from pyinfra.api import OperationError
from pyinfra.api.command import FunctionCommand
from pyinfra.connectors.util import CommandOutput
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.operations import parse_commands
from pyinfra_testing.util import FakeState

from portable_k3s.config import validate_inventory
from portable_k3s.deploys.k3s import airgap_images, node_settings, release_urls
from portable_k3s.operations import k3s
from tests.callbacks import host_failure
from tests.callbacks import named_host as _host
from tests.callbacks import output as _output
from tests.callbacks import raw as _raw
from tests.unit.test_config import good_data, good_groups, make_inventory, problems_of, with_data, with_host

VERSION = "v1.35.3+k3s1"
OLD = "v1.34.6+k3s1"
URL = f"https://github.com/k3s-io/k3s/releases/download/{VERSION.replace('+', '%2B')}/k3s"
SUMS = f"https://github.com/k3s-io/k3s/releases/download/{VERSION.replace('+', '%2B')}/sha256sum-amd64.txt"
SERVER_TOKEN_TEXT = "K10" + "ab" * 32 + "::server:" + "cd" * 16
SHA_A = "a" * 64
SHA_B = "b" * 64








def _file(sha: str, mode: str = "600") -> dict:
    return {"sha256": sha, "mode": mode, "user": "root", "group": "root"}


# k3s.config: an agent joins the first server at its tailnet address


def _uploaded_config(commands: list[Any]) -> dict:
    serialised = parse_commands(commands)
    upload = next(c for c in serialised if isinstance(c, list) and c[0] == "upload")
    return yaml.safe_load(upload[1])


def _agent_config(**kwargs: Any) -> list[Any]:
    """The commands of t420's agent config, joining master (100.64.0.2); t420 is 100.64.0.3."""
    state = FakeState()
    server = _host(state, "master", {"tailscale.Tailscale": {"ipv4": "100.64.0.2"}})
    node = _host(state, "t420", {
        "tailscale.Tailscale": {"ipv4": "100.64.0.3"},
        "files.FileStates": {"paths=('/etc/rancher/k3s/config.yaml',)": {"/etc/rancher/k3s/config.yaml": None}},
    })
    with ctx_state.use(state), ctx_host.use(node):
        return list(k3s.config._inner(role="agent", node_name="t420", join=server, **kwargs))


def test_agent_config_joins_the_server_at_its_tailnet_address() -> None:
    commands = _agent_config(settings={"node-label": ["disk=ssd"]})
    assert _uploaded_config(commands) == {
        "node-name": "t420",
        "node-ip": "100.64.0.3",
        "flannel-iface": "tailscale0",
        "server": "https://100.64.0.2:6443",
        "token-file": "/etc/rancher/k3s/token",
        "node-label": ["disk=ssd"],
    }
    # 0600 from the first byte: the staged file is created with its final mode before the upload.
    assert "install -m 0600 -o root -g root /dev/null" in _raw(commands[0])


def test_config_refuses_to_execute_without_the_servers_tailnet_address() -> None:
    state = FakeState()
    state.is_executing = True
    server = _host(state, "master", {"tailscale.Tailscale": {"ipv4": None}})
    node = _host(state, "t420", {"tailscale.Tailscale": {"ipv4": "100.64.0.3"}})
    with ctx_state.use(state), ctx_host.use(node):
        commands = list(k3s.config._inner(role="agent", node_name="t420", settings={}, join=server))
    assert "master has no tailnet IPv4" in host_failure(commands)


# k3s.token: copied from the first server, never printed, never in argv


def _plan_token(mine: dict | None, theirs: dict | None, source_path: str = k3s.TOKEN) -> tuple[Any, Any, Any, list]:
    state = FakeState()
    state.is_executing = True
    server = _host(state, "master", {"files.FileStates": {f"paths=('{source_path}',)": {source_path: theirs}}})
    node = _host(state, "t420", {"files.FileStates": {"paths=('/etc/rancher/k3s/token',)": {k3s.TOKEN: mine}}})
    with ctx_state.use(state), ctx_host.use(node):
        commands = list(k3s.token._inner(source=server, source_path=source_path))
    return state, server, node, commands


def test_token_already_copied_is_left_alone() -> None:
    _, _, node, commands = _plan_token(_file(SHA_A), _file(SHA_A), k3s.SERVER_TOKEN)
    assert commands == []
    assert node.noop_description == "/etc/rancher/k3s/token holds master's cluster token"


@pytest.mark.parametrize("mine", [None, _file(SHA_B), _file(SHA_A, mode="644")], ids=["missing", "other", "0644"])
def test_token_is_copied_from_the_server_without_printing_it(mine: dict | None) -> None:
    state, server, node, commands = _plan_token(mine, _file(SHA_A), k3s.SERVER_TOKEN)
    (function,) = commands
    assert isinstance(function, FunctionCommand) and function.function.__name__ == "_copy_token"
    assert function.args[:3] == (server, k3s.SERVER_TOKEN, k3s.TOKEN)
    server.run_shell_command = mock.Mock(return_value=(True, _output(SERVER_TOKEN_TEXT)))
    node.run_shell_command = mock.Mock(return_value=(True, _output()))
    node.put_file = mock.Mock(return_value=True)
    function.function(state, node, *function.args, **function.kwargs)

    (read,) = server.run_shell_command.call_args_list
    assert _raw(read.args[0]) == f"cat {k3s.SERVER_TOKEN}"
    assert read.kwargs["print_output"] is False and read.kwargs["print_input"] is False
    (upload,) = node.put_file.call_args_list
    source, staged = upload.args
    assert isinstance(source, StringIO) and source.getvalue() == SERVER_TOKEN_TEXT + "\n"
    assert upload.kwargs["print_output"] is False and upload.kwargs["print_input"] is False
    prepare, move = (_raw(call.args[0]) for call in node.run_shell_command.call_args_list)
    assert prepare.endswith(f"install -m 0600 /dev/null {staged}")  # 0600 before the token is written
    assert move == f"mv -f {staged} {k3s.TOKEN}"
    assert all(SERVER_TOKEN_TEXT not in _raw(call.args[0]) for call in node.run_shell_command.call_args_list)


def test_token_copy_stops_when_the_server_has_none() -> None:
    assert host_failure(_plan_token(None, None, k3s.SERVER_TOKEN)[3]) == (
        f"master has no {k3s.SERVER_TOKEN}: the first server must be up before others join"
    )


# k3s.vpn_auth: the "native" tailnet mode's join settings, with a key minted on the headscale host


PREAUTH_KEY = "hskey-auth-" + "k" * 40


def _plan_vpn_auth(mine: dict | None) -> tuple[Any, Any, Any, list]:
    state = FakeState()
    state.is_executing = True
    cloud = _host(state, "cloud", {})
    node = _host(state, "t420", {"files.FileStates": {f"paths=('{k3s.VPN_AUTH}',)": {k3s.VPN_AUTH: mine}}})
    with ctx_state.use(state), ctx_host.use(node):
        commands = list(k3s.vpn_auth._inner(
            login_server="https://headscale.example.org", headscale_host=cloud, tags=["tag:k3s"],
        ))
    return state, cloud, node, commands


def test_vpn_auth_file_in_place_is_left_alone() -> None:
    _, cloud, node, commands = _plan_vpn_auth(_file(SHA_A))
    assert commands == []
    assert node.noop_description == f"{k3s.VPN_AUTH} holds k3s's tailnet join settings"


@pytest.mark.parametrize("mine", [None, _file(SHA_A, mode="644")], ids=["missing", "0644"])
def test_vpn_auth_gets_a_fresh_key_never_printed_nor_in_argv(mine: dict | None) -> None:
    state, cloud, node, commands = _plan_vpn_auth(mine)
    assert parse_commands(commands) == [["write_vpn_auth", [], {}]]
    cloud.run_shell_command = mock.Mock(return_value=(True, _output(f'{{"key": "{PREAUTH_KEY}"}}')))
    node.run_shell_command = mock.Mock(return_value=(True, _output()))
    node.put_file = mock.Mock(return_value=True)
    function: FunctionCommand = commands[0]
    function.function(state, node, *function.args, **function.kwargs)

    (mint,) = cloud.run_shell_command.call_args_list
    assert _raw(mint.args[0]).startswith("headscale preauthkeys create --expiration")
    assert "--tags tag:k3s" in _raw(mint.args[0])
    assert mint.kwargs["print_output"] is False and mint.kwargs["print_input"] is False
    (upload,) = node.put_file.call_args_list
    source, staged = upload.args
    assert source.getvalue() == (
        f"name=tailscale,joinKey={PREAUTH_KEY},controlServerURL=https://headscale.example.org"
    )
    assert upload.kwargs["print_output"] is False and upload.kwargs["print_input"] is False
    prepare, move = (_raw(call.args[0]) for call in node.run_shell_command.call_args_list)
    assert prepare.endswith(f"install -m 0600 /dev/null {staged}")
    assert move == f"mv -f {staged} {k3s.VPN_AUTH}"
    assert all(PREAUTH_KEY not in _raw(call.args[0]) for call in node.run_shell_command.call_args_list)


def test_vpn_auth_removed_in_manual_mode_expires_its_key_on_headscale() -> None:
    state = FakeState()
    state.is_executing = True
    cloud = _host(state, "cloud", {})
    node = _host(state, "t420", {"files.FileStates": {f"paths=('{k3s.VPN_AUTH}',)": {k3s.VPN_AUTH: _file(SHA_A)}}})
    with ctx_state.use(state), ctx_host.use(node):
        commands = list(k3s.vpn_auth._inner(login_server="https://h.example.org", headscale_host=cloud,
                                            tags=["tag:k3s"], present=False))
    assert parse_commands(commands) == [["retire_vpn_auth", [], {}], f"rm -f {k3s.VPN_AUTH}"]
    node.run_shell_command = mock.Mock(return_value=(True, _output(
        f"name=tailscale,joinKey={PREAUTH_KEY},controlServerURL=https://h.example.org"
    )))
    listed = [{"id": 4, "key": "hskey-auth-other-***"}, {"id": 7, "key": PREAUTH_KEY[:20] + "***"}]
    cloud.run_shell_command = mock.Mock(side_effect=[(True, _output(json.dumps(listed))), (True, _output())])
    function: FunctionCommand = commands[0]
    function.function(state, node, *function.args, **function.kwargs)
    (read,) = node.run_shell_command.call_args_list
    assert read.kwargs["print_output"] is False and read.kwargs["print_input"] is False
    listing, expire = (_raw(call.args[0]) for call in cloud.run_shell_command.call_args_list)
    assert listing == "headscale preauthkeys list -o json"
    assert expire == "headscale preauthkeys expire --id 7"


def test_native_config_leaves_the_addresses_to_k3s() -> None:
    assert _uploaded_config(_agent_config(settings={}, mode="native")) == {
        "node-name": "t420", "server": "https://100.64.0.2:6443", "token-file": k3s.TOKEN,
        "vpn-auth-file": k3s.VPN_AUTH,
    }


# k3s.binary: an upgrade, one node at a time, drained and uncordoned around it


def _plan_upgrade(state: FakeState, name: str, role: str, via: Any, **kwargs: Any) -> tuple[Any, FunctionCommand]:
    node = _host(state, name, {
        "release.InstalledRelease": {"component=k3s, paths=['/usr/local/bin/k3s']": {"version": OLD, "sha256": SHA_A}},
    })
    with ctx_state.use(state), ctx_host.use(node):
        (command,) = list(k3s.binary._inner(version=VERSION, url=URL, checksum_url=SUMS, node_name=name, role=role,
                                            via=via, drain_timeout=60, ready_timeout=5, **kwargs))
    assert isinstance(command, FunctionCommand)
    return node, command


def _nodes_json(*nodes: tuple[str, bool, str]) -> str:
    import json

    return json.dumps({"kind": "List", "items": [
        {"metadata": {"name": name}, "spec": {},
         "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                    "nodeInfo": {"kubeletVersion": version}}}
        for name, ready, version in nodes
    ]})


def test_upgrade_drains_installs_restarts_waits_and_uncordons() -> None:
    state = FakeState()
    state.is_executing = True
    server = _host(state, "master", {})
    node, command = _plan_upgrade(state, "t420", "agent", server)
    log: list[str] = []
    answers = iter([_nodes_json(("t420", False, OLD)), _nodes_json(("t420", True, VERSION))])

    def kubectl(cmd: Any, **kwargs: Any) -> tuple[bool, CommandOutput]:
        log.append(f"master: {_raw(cmd)}")
        return True, _output(next(answers) if "get nodes" in _raw(cmd) else "ok")

    def on_node(cmd: Any, **kwargs: Any) -> tuple[bool, CommandOutput]:
        log.append(f"t420: {_raw(cmd)[:40]}")
        return True, _output()

    server.run_shell_command = kubectl
    node.run_shell_command = on_node
    with mock.patch.object(gevent, "sleep"):
        command.function(state, node)
    assert log == [
        "master: k3s kubectl drain t420 --ignore-daemonsets --delete-emptydir-data --force --timeout=60s",
        "t420: set -e; tmp=$(mktemp -d /tmp/portable-k3",  # the verified download + install
        "t420: systemctl restart --no-block k3s-agent.s",  # waits at most ready_timeout for it to be active
        "master: k3s kubectl get nodes -o json",  # not Ready yet
        "master: k3s kubectl get nodes -o json",  # Ready at the new version
        "master: k3s kubectl uncordon t420",
        "t420: mkdir -p /var/lib/portable-k3s/releases ",  # recorded only now: a failed run resumes
    ]


def test_the_upgrades_restart_takes_up_what_is_pending_and_removes_the_mark() -> None:
    """New airgap images are installed (and marked) before the binary: the upgrade's restart imports them, so a
    later run must not restart k3s again for them."""
    state = FakeState()
    state.is_executing = True
    server = _host(state, "master", {})
    marker = "/var/lib/portable-k3s/pending/k3s-agent.service.restart"
    node, command = _plan_upgrade(state, "t420", "agent", server, pending=marker)
    ran: list[str] = []
    server.run_shell_command = lambda cmd, **kwargs: (True, _output(
        _nodes_json(("t420", True, VERSION)) if "get nodes" in _raw(cmd) else "ok"))
    node.run_shell_command = lambda cmd, **kwargs: (ran.append(_raw(cmd)), (True, _output()))[1]
    with mock.patch.object(gevent, "sleep"):
        command.function(state, node)
    (restart,) = [c for c in ran if "systemctl restart" in c]
    assert restart.endswith(f"&& rm -f {marker}"), restart


def test_upgrade_of_a_node_that_never_gets_ready_leaves_it_cordoned() -> None:
    state = FakeState()
    state.is_executing = True
    server = _host(state, "master", {})
    node, command = _plan_upgrade(state, "t420", "agent", server)
    calls: list[str] = []

    def kubectl(cmd: Any, **kwargs: Any) -> tuple[bool, CommandOutput]:
        calls.append(_raw(cmd))
        return True, _output(_nodes_json(("t420", True, OLD)) if "get nodes" in _raw(cmd) else "ok")

    server.run_shell_command = kubectl
    node.run_shell_command = mock.Mock(return_value=(True, _output()))
    with mock.patch.object(gevent, "sleep"), mock.patch("portable_k3s.operations.k3s.time.monotonic",
                                                        side_effect=[0, 1, 2, 10, 10, 10]):
        with pytest.raises(OperationError) as raised:
            command.function(state, node)
    assert "t420 was not Ready at v1.35.3+k3s1 within 5s (Ready=True at v1.34.6+k3s1); it stays cordoned" in (
        raised.value.args[0])
    assert not any("uncordon" in call for call in calls)


def test_after_a_failed_upgrade_no_other_node_starts_one() -> None:
    state = FakeState()
    state.is_executing = True
    server = _host(state, "master", {})
    (first, first_command), (second, second_command) = (
        _plan_upgrade(state, name, "agent", server) for name in ("t420", "t410")
    )
    server.run_shell_command = mock.Mock(return_value=(False, _output(stderr="error: cannot evict pod")))
    first.run_shell_command = second.run_shell_command = mock.Mock(return_value=(True, _output()))
    with pytest.raises(OperationError, match="draining t420 through master failed"):
        first_command.function(state, first)
    with pytest.raises(OperationError) as raised:
        second_command.function(state, second)
    assert raised.value.args[0] == "not upgrading: the upgrade of t420 failed in this run"
    assert server.run_shell_command.call_count == 1  # t410 was never drained
    first.run_shell_command.assert_not_called()


def test_upgrades_of_several_nodes_never_overlap() -> None:
    state = FakeState()
    state.is_executing = True
    server = _host(state, "master", {})
    planned = [_plan_upgrade(state, name, "agent", server) for name in ("t420", "t410", "t430")]
    active: list[str] = []
    overlap: list[tuple[str, ...]] = []

    def kubectl(cmd: Any, **kwargs: Any) -> tuple[bool, CommandOutput]:
        raw = _raw(cmd)
        if "drain" in raw:
            active.append(raw.split()[3])
            if len(active) > 1:
                overlap.append(tuple(active))
        if "uncordon" in raw:
            active.remove(raw.split()[3])
        gevent.sleep(0.001)
        names = [node.name for node, _ in planned]
        return True, _output(_nodes_json(*((n, True, VERSION) for n in names)) if "get nodes" in raw else "ok")

    server.run_shell_command = kubectl
    for node, _ in planned:
        node.run_shell_command = mock.Mock(return_value=(True, _output()))
    jobs = [gevent.spawn(command.function, state, node) for node, command in planned]
    gevent.joinall(jobs, raise_error=True)
    assert overlap == []
    assert active == []


# The deploy's helpers


@pytest.mark.parametrize(
    ("machine", "binary", "arch"),
    [("x86_64", "k3s", "amd64"), ("aarch64", "k3s-arm64", "arm64"), ("armv7l", "k3s-armhf", "arm")],
)
def test_release_urls_follow_the_upstream_layout(machine: str, binary: str, arch: str) -> None:
    url, sums = release_urls("https://github.com/k3s-io/k3s/releases/download/", VERSION, machine)
    folder = "https://github.com/k3s-io/k3s/releases/download/v1.35.3%2Bk3s1"
    assert (url, sums) == (f"{folder}/{binary}", f"{folder}/sha256sum-{arch}.txt")


def test_airgap_images_follow_the_upstream_layout() -> None:
    url, path = airgap_images("https://github.com/k3s-io/k3s/releases/download", VERSION, "aarch64")
    assert url == "https://github.com/k3s-io/k3s/releases/download/v1.35.3%2Bk3s1/k3s-airgap-images-arm64.tar.zst"
    assert path == "/var/lib/rancher/k3s/agent/images/k3s-airgap-images.tar.zst"  # planned before the arch is read


class _Data(dict):
    def __getattr__(self, key: str) -> Any:
        return self[key]


def _data(**overrides: Any) -> _Data:
    from portable_k3s.deploys.k3s import K3S_DEFAULTS

    return _Data({**K3S_DEFAULTS, **overrides})


def test_first_server_settings_with_snapshots_to_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_S3_ACCESS", "AKIAEXAMPLE")
    monkeypatch.setenv("TEST_S3_SECRET", "s3cr3t")
    data = _data(k3s_etcd_s3={"endpoint": "s3.example.org", "bucket": "etcd", "folder": "home"},
                 s3_access_key={"env": "TEST_S3_ACCESS"}, s3_secret_key={"env": "TEST_S3_SECRET"},
                 k3s_node_taints=["dedicated=infra:NoSchedule"])
    assert node_settings(data, "server", first=True) == {
        "node-taint": ["dedicated=infra:NoSchedule"],
        "disable": ["servicelb"],
        "cluster-init": True,
        "etcd-snapshot-schedule-cron": "0 */6 * * *",
        "etcd-snapshot-retention": 20,
        "etcd-s3": True,
        "etcd-s3-endpoint": "s3.example.org",
        "etcd-s3-bucket": "etcd",
        "etcd-s3-folder": "home",
        "etcd-s3-access-key": "AKIAEXAMPLE",
        "etcd-s3-secret-key": "s3cr3t",
    }


def test_snapshots_to_an_s3_store_over_plain_http_set_etcd_s3_insecure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_S3_ACCESS", "AKIAEXAMPLE")
    monkeypatch.setenv("TEST_S3_SECRET", "s3cr3t")
    s3 = {"endpoint": "10.0.0.5:9000", "bucket": "etcd", "region": "lab-1", "insecure": True}
    data = _data(k3s_etcd_s3=s3, s3_access_key={"env": "TEST_S3_ACCESS"}, s3_secret_key={"env": "TEST_S3_SECRET"})
    settings = node_settings(data, "server", first=True)
    assert {k: v for k, v in settings.items() if k.startswith("etcd-s3")} == {
        "etcd-s3": True, "etcd-s3-endpoint": "10.0.0.5:9000", "etcd-s3-bucket": "etcd", "etcd-s3-region": "lab-1",
        "etcd-s3-insecure": True, "etcd-s3-access-key": "AKIAEXAMPLE", "etcd-s3-secret-key": "s3cr3t",
    }
    https = node_settings(_data(k3s_etcd_s3={**s3, "insecure": False}, s3_access_key={"env": "TEST_S3_ACCESS"},
                                s3_secret_key={"env": "TEST_S3_SECRET"}), "server", first=True)
    assert "etcd-s3-insecure" not in https  # k3s's default: https
    keys = {"s3_access_key": {"env": "TEST_S3_ACCESS"}, "s3_secret_key": {"env": "TEST_S3_SECRET"}}
    assert problems_of(with_data(k3s_etcd_s3=s3, **keys), require_secrets=False) == []


def test_joining_server_and_agent_settings() -> None:
    data = _data(k3s_node_labels=["disk=ssd"], k3s_extra_config={"kubelet-arg": ["max-pods=50"]})
    assert node_settings(data, "server", first=False) == {
        "node-label": ["disk=ssd"], "disable": ["servicelb"], "etcd-snapshot-schedule-cron": "0 */6 * * *",
        "etcd-snapshot-retention": 20, "kubelet-arg": ["max-pods=50"],
    }
    assert node_settings(data, "agent", first=False) == {"node-label": ["disk=ssd"], "kubelet-arg": ["max-pods=50"]}


def test_single_node_datastore_without_etcd_has_no_snapshots() -> None:
    assert node_settings(_data(k3s_cluster_init=False), "server", first=True) == {"disable": ["servicelb"]}


# k3s.kubeconfig: to the machine running pyinfra, 0600, pointing at the server's tailnet address

KUBECONFIG_TEXT = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTi
    server: https://127.0.0.1:6443
  name: default
users:
- name: default
  user:
    client-key-data: c2VjcmV0LWtleQ==
"""


def _plan_kubeconfig(local: str, sha: str = SHA_A) -> tuple[FakeState, Any, list]:
    state = FakeState()
    state.is_executing = True
    server = _host(state, "master", {
        "files.FileStates": {"paths=('/etc/rancher/k3s/k3s.yaml',)": {k3s.KUBECONFIG: _file(sha)}},
        "tailscale.Tailscale": {"ipv4": "100.64.0.2"},
    })
    with ctx_state.use(state), ctx_host.use(server):
        commands = list(k3s.kubeconfig._inner(local_path=local))
    return state, server, commands


def test_kubeconfig_is_fetched_0600_with_the_tailnet_address_then_left_alone(tmp_path) -> None:
    import os
    import stat

    local = str(tmp_path / "kube" / "portable-k3s.yaml")
    state, server, commands = _plan_kubeconfig(local)
    assert parse_commands(commands) == [["fetch", [], {}]]
    server.run_shell_command = mock.Mock(return_value=(True, _output(KUBECONFIG_TEXT)))
    commands[0].function(state, server)
    (read,) = server.run_shell_command.call_args_list
    assert read.kwargs["print_output"] is False and read.kwargs["print_input"] is False
    text = open(local).read()
    assert stat.S_IMODE(os.stat(local).st_mode) == 0o600
    assert text.startswith(f"# portable-k3s: master:{k3s.KUBECONFIG} sha256 {SHA_A}, server https://100.64.0.2:6443\n")
    assert "    server: https://100.64.0.2:6443\n" in text and "127.0.0.1" not in text
    assert "client-key-data: c2VjcmV0LWtleQ==" in text

    _, again, commands = _plan_kubeconfig(local)
    assert commands == []
    assert again.noop_description == f"{local} holds master's admin kubeconfig for https://100.64.0.2:6443"
    _, changed, commands = _plan_kubeconfig(local, sha=SHA_B)  # the server's kubeconfig changed
    assert parse_commands(commands) == [["fetch", [], {}]]


# The config model's k3s keys: each bad value is one problem naming the key and what is valid


K3S_BAD_CASES: list[tuple[str, Any, str]] = [
    ("download url", lambda: with_data(k3s_download_url="ftp://x"),
     "all.k3s_download_url: 'ftp://x' is not a URL (expected an https:// or http:// URL of the base of k3s's "
     "release downloads, like https://github.com/k3s-io/k3s/releases/download)"),
    ("sha256", lambda: with_data(k3s_sha256="abc"),
     "all.k3s_sha256: 'abc' is not a sha256 (expected 64 lower-case hex digits, or None to use the release "
     "checksums)"),
    ("interface", lambda: with_data(k3s_tailnet_iface="tailscale0 "),
     "all.k3s_tailnet_iface: 'tailscale0 ' is not an interface name (expected the tailnet interface, tailscale0)"),
    ("tailnet mode", lambda: with_data(k3s_tailnet_mode="vpn"),
     "all.k3s_tailnet_mode: 'vpn' is not a tailnet mode (expected 'manual' (node-ip and flannel-iface on "
     "tailscale0) or 'native' (k3s's own vpn-auth tailscale integration))"),
    ("cluster init", lambda: with_data(k3s_cluster_init="yes"),
     "all.k3s_cluster_init: 'yes' is a str (expected True or False)"),
    ("disable", lambda: with_data(k3s_disable=["flannel"]),
     "all.k3s_disable: ['flannel'] is not a list of k3s components (expected a list of coredns, servicelb, "
     "traefik, local-storage, metrics-server, runtimes)"),
    ("label", lambda: with_data(k3s_node_labels=["disk"]),
     "all.k3s_node_labels[0]: 'disk' is not a valid node label (expected key=value node labels, like disk=ssd)"),
    ("taint", lambda: with_data(k3s_node_taints=["gpu=yes:Sometimes"]),
     "all.k3s_node_taints[0]: 'gpu=yes:Sometimes' is not a valid taint (expected key=value:Effect taints, Effect "
     "one of "
     "NoSchedule, PreferNoSchedule, NoExecute)"),
    ("schedule", lambda: with_data(k3s_etcd_snapshot_schedule="hourly"),
     "all.k3s_etcd_snapshot_schedule: 'hourly' is not a cron schedule (expected five cron fields like "
     "'0 */6 * * *', or None for no snapshots)"),
    ("retention", lambda: with_data(k3s_etcd_snapshot_retention=0),
     "all.k3s_etcd_snapshot_retention: 0 is out of range (expected a number of snapshots, 1-1000)"),
    ("s3 insecure", lambda: with_data(k3s_etcd_s3={"endpoint": "s3.example.org", "bucket": "etcd", "insecure": "yes"}),
     "all.k3s_etcd_s3: insecure 'yes' is not True or False (expected True (plain http, e.g. a store on the tailnet) "
     "or False (https))"),
    ("s3 unknown key", lambda: with_data(k3s_etcd_s3={"endpoint": "s3.example.org", "bucket": "etcd", "tls": False}),
     "all.k3s_etcd_s3: unknown keys ['tls'] (expected {\"endpoint\": \"s3.example.org\", \"bucket\": \"etcd\", "
     "\"region\": …, \"folder\": …, \"insecure\": …} or None)"),
    ("s3 keys", lambda: with_data(k3s_etcd_s3={"endpoint": "s3.example.org", "bucket": "etcd"}),
     'master.s3_access_key: is missing while k3s_etcd_s3 is set (expected {"env": "NAME"} or {"file": "PATH"}; '
     "never a literal secret in group_data, for the S3 bucket's key)"),
    ("managed flag", lambda: with_data(k3s_extra_config={"node-ip": "192.0.2.1"}),
     "all.k3s_extra_config.node-ip: is written by the deploy itself (expected k3s_tailnet_iface (the node's "
     "tailnet IPv4 is read from it) instead)"),
    ("registries literal password", lambda: with_data(k3s_registries={
        "configs": {"registry.lan:5000": {"auth": {"username": "me", "password": "hunter2"}}}}),
     "all.k3s_registries: configs['registry.lan:5000'].auth.password: is a literal secret (expected "),
    ("registries endpoint", lambda: with_data(k3s_registries={"mirrors": {"docker.io": {"endpoint": "registry.lan"}}}),
     "all.k3s_registries: mirrors['docker.io'].endpoint: 'registry.lan' is not a list of URLs (expected registry "
     'URLs like ["https://registry.lan:5000"])'),
    ("registries unknown key", lambda: with_data(k3s_registries={"mirror": {}}),
     "all.k3s_registries: unknown key 'mirror' (expected \"mirrors\" and \"configs\", as in k3s's registries.yaml)"),
    ("registries rewrite", lambda: with_data(k3s_registries={"mirrors": {"docker.io": {
        "endpoint": ["https://registry.lan"], "rewrite": {"^rancher/(.*": "mirror/$1"}}}}),
     "all.k3s_registries: mirrors['docker.io'].rewrite: '^rancher/(.*' -> 'mirror/$1' is not a rewrite rule"),
    ("registries tls", lambda: with_data(k3s_registries={"configs": {"registry.lan": {"tls": {"ca_file": "ca.pem"}}}}),
     "all.k3s_registries: configs['registry.lan'].tls.ca_file: 'ca.pem' is not an absolute path (expected a file "
     "on the node, like /etc/ssl/lan-ca.pem)"),
    ("drain timeout", lambda: with_data(k3s_drain_timeout=5),
     "all.k3s_drain_timeout: 5 is out of range (expected whole seconds 10-3600)"),
    ("state", lambda: with_data(k3s_state="gone"),
     "all.k3s_state: 'gone' is not a state (expected 'present' or 'absent' (uninstall k3s from the node))"),
    ("kubeconfig", lambda: with_data(k3s_kubeconfig=""),
     "all.k3s_kubeconfig: '' is not a path (expected a path on the machine running pyinfra, or None to not "
     "fetch it)"),
    ("first server removed first", lambda: with_host("k3s_servers", 0, "master", {"k3s_state": "absent"}),
     "master.k3s_state: 'absent' on the first server while t420, t410 keep k3s (expected the first of "
     "k3s_servers removed last (every other node joins it), or another server listed first)"),
    ("mixed tailnet modes", lambda: with_host("k3s_agents", 0, "t420", {"k3s_tailnet_mode": "native"}),
     "k3s_servers.k3s_tailnet_mode: differs between k3s nodes: master=manual, t420=native, t410=manual "
     "(expected one mode for every k3s node: flannel's backend follows it, cluster-wide)"),
    ("native mode with routes",
     lambda: with_data(k3s_tailnet_mode="native", tailscale_advertise_routes=["192.168.1.0/24"]),
     "all.tailscale_advertise_routes: is set on nodes with k3s_tailnet_mode 'native' (expected no routes on "
     "native-mode nodes (k3s replaces them with the pod subnet), or mode 'manual')"),
    ("native mode on another interface", lambda: with_data(k3s_tailnet_mode="native", k3s_tailnet_iface="ts0"),
     "all.k3s_tailnet_iface: 'ts0' with k3s_tailnet_mode 'native' (expected tailscale0 (k3s's tailscale "
     "integration uses that interface))"),
]


def _moved(move_from: Any = "master", on: str = "awow2", **server_data: Any) -> Any:
    """The first server moved to a new machine: master out of k3s_servers into a group of its own."""
    groups = good_groups()
    groups["k3s_servers"] = ([("awow2", {**({"k3s_move_from": move_from} if on == "awow2" else {}),
                                         **server_data})], {})
    groups["retired"] = ([("master", {"k3s_move_from": move_from} if on == "master" else {})], {})
    if on == "t420":
        groups["k3s_agents"] = ([("t420", {"k3s_move_from": move_from}), "t410"], {})
    return make_inventory(groups=groups)


def test_a_server_move_names_the_old_server_kept_out_of_the_k3s_groups() -> None:
    assert problems_of(_moved(), require_secrets=False) == []


@pytest.mark.parametrize(("inventory", "problem"), [
    (lambda: _moved("mastr"), "awow2.k3s_move_from: 'mastr' is not a host of the inventory (expected the old "
     "server, kept in the inventory (out of the k3s groups) until the move is done: one of cloud, pi, master)"),
    (lambda: _moved("t420"), "awow2.k3s_move_from: 't420' is still a k3s node (expected t420 out of k3s_servers "
     "and k3s_agents: this run takes k3s off it)"),
    (lambda: _moved(on="t420"), "t420.k3s_move_from: applies to t420, not only to the first server (awow2) "
     "(expected k3s_move_from in the host data of the first of k3s_servers only)"),
    (lambda: _moved(k3s_cluster_init=False), "awow2.k3s_move_from: needs k3s_cluster_init (embedded etcd): the "
     "move restores an etcd snapshot (expected k3s_cluster_init = True on the old and the new server)"),
    (lambda: _moved(5), "awow2.k3s_move_from: 5 is an int (expected a string, the inventory name of the server"),
], ids=["unknown host", "still a node", "not the first server", "no etcd", "not a name"])
def test_a_bad_server_move_is_named_before_anything_runs(inventory: Any, problem: str) -> None:
    problems = problems_of(inventory(), require_secrets=False)
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(("inventory", "problem"), [pytest.param(i, p, id=n) for n, i, p in K3S_BAD_CASES])
def test_bad_k3s_value_is_named_with_what_is_valid(inventory: Any, problem: str) -> None:
    problems = problems_of(inventory(), require_secrets=False)
    assert any(p.startswith(problem) for p in problems), problems


def test_registries_yaml_is_k3s_s_format_with_the_credentials_read_from_their_references(monkeypatch) -> None:
    from portable_k3s.deploys.k3s import registries

    monkeypatch.setenv("TEST_REGISTRY_PASSWORD", "s3cret-registry")
    value = {
        "mirrors": {"docker.io": {"endpoint": ["https://registry.lan:5000"], "rewrite": {"^rancher/(.*)": "r/$1"}}},
        "configs": {"registry.lan:5000": {"auth": {"username": "me", "password": {"env": "TEST_REGISTRY_PASSWORD"}},
                                          "tls": {"ca_file": "/etc/ssl/lan-ca.pem"}}},
    }
    assert problems_of(with_data(k3s_registries=value), require_secrets=False) == []
    text = k3s.registries_text(registries(_data(k3s_registries=value)))
    assert yaml.safe_load(text) == {
        "mirrors": value["mirrors"],
        "configs": {"registry.lan:5000": {"auth": {"username": "me", "password": "s3cret-registry"},
                                          "tls": {"ca_file": "/etc/ssl/lan-ca.pem"}}},
    }
    assert registries(_data()) is None  # not set: the file is left alone
    assert yaml.safe_load(k3s.registries_text(registries(_data(k3s_registries={})))) == {}


def test_native_mode_on_an_exit_node_is_refused() -> None:
    groups = good_groups()
    groups["exit_nodes"] = ([("pi", {"hardware": "raspberry-pi"}), "t410"], {})
    inventory = make_inventory(data={**good_data(), "k3s_tailnet_mode": "native"}, groups=groups)
    assert problems_of(inventory, require_secrets=False) == [
        "t410.k3s_tailnet_mode: 'native' on an exit node (expected 'manual' (k3s's flannel would replace the "
        "exit-node routes))"
    ]


def test_native_mode_routes_the_pod_network_through_the_tailnet() -> None:
    assert validate_inventory(with_data(), require_secrets=False).tailnet.pod_cidrs == []  # type: ignore[union-attr]
    native = validate_inventory(with_data(k3s_tailnet_mode="native"), require_secrets=False)
    assert native.tailnet.pod_cidrs == ["10.42.0.0/16"]  # type: ignore[union-attr]
    custom = validate_inventory(
        with_data(k3s_tailnet_mode="native", k3s_extra_config={"cluster-cidr": "10.60.0.0/16,fd00:42::/56"}),
        require_secrets=False,
    )
    assert custom.tailnet_policy()["autoApprovers"]["routes"] == {"10.60.0.0/16": ["tag:k3s"]}
