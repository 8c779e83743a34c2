"""The tailnet's pure functions and the operations that need another inventory host.

``tailscale.joined`` reads facts from two hosts (the node and the headscale server it joins), which a
pyinfra-testing case file cannot express: those cases are here, with a fake host for each. The functions the
operations defer to execution time (minting and uploading a pre-auth key, writing MagicDNS records) are run
here against mocked connections.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import StringIO
from typing import Any
from unittest import mock

import pytest
from pyinfra.api import OperationError, OperationValueError, StringCommand
from pyinfra.api.command import FunctionCommand
from pyinfra.connectors.util import CommandOutput
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.operations import parse_commands
from pyinfra_testing.util import FakeState

from portable_k3s.deploys.headscale import BUILTIN_TAGS, host_tags, tailnet_policy
from portable_k3s.operations import headscale, tailscale
from tests.callbacks import named_host as _host
from tests.callbacks import output as _output
from tests.callbacks import raw as _raw

LOGIN = "https://hs.example.org"
NODE_KEY = "nodekey:dfaac6c30b0a04af0e78e41ba15ce45e374f42fcc2b9313e44403166b274956f"
OTHER_KEY = "nodekey:91252398ad674cba4fd67ea77d6aa9491233efb7cadb4254731a7d94b87f8533"
AUTHKEY_FILE = "/run/portable-k3s/tailscale-authkey"
DEFAULT_FLAGS = (
    "--hostname=t420 --accept-dns=true --snat-subnet-routes=true --accept-routes=false --advertise-exit-node=false "
    "--advertise-routes="
)
# What `headscale preauthkeys create -o json` prints (Go's encoding/json of the protobuf message).
PREAUTH_KEY = "hskey-auth-kQ3vD8xR2mWt-Z7pLcY4nB9sF1gH6jK0eU5aV2wX8rT3qM7dN4"
PREAUTH_JSON = json.dumps(
    {
        "id": 7,
        "key": PREAUTH_KEY,
        "expiration": {"seconds": 1764141001, "nanos": 904211000},
        "created_at": {"seconds": 1764140101, "nanos": 904211000},
        "acl_tags": ["tag:k3s"],
    },
    indent="\t",
)




def _tailscale_info(backend_state: str = "Running", node_key: str | None = NODE_KEY, **prefs: Any) -> dict:
    """The Tailscale fact of node t420: joined to LOGIN with the default settings, unless overridden."""
    wanted = {
        "ControlURL": LOGIN,
        "Hostname": "t420",
        "RouteAll": False,
        "CorpDNS": True,
        "AdvertiseRoutes": None,
        "AdvertiseTags": None,
        "WantRunning": True,
        "LoggedOut": False,
        "NoSNAT": False,
    }
    running = backend_state == "Running"
    return {
        "version": "1.98.10",
        "backend_state": backend_state,
        "node_key": node_key,
        "dns_name": "t420.tail.example.org" if running else None,
        "ipv4": "100.64.0.2" if running else None,
        "ipv6": "fd7a:115c:a1e0::2" if running else None,
        "online": running,
        "prefs": {**wanted, **prefs},
    }


def _headscale_info(*node_keys: str, running: bool = True) -> dict:
    """The Headscale fact of the server: the nodes with these keys (none when it is not running)."""
    nodes = [
        {
            "id": index,
            "name": f"node{index}",
            "node_key": key,
            "ipv4": f"100.64.0.{index}",
            "tags": ["tag:k3s"],
            "online": True,
            "approved_routes": [],
        }
        for index, key in enumerate(node_keys, start=1)
    ]
    return {"running": running, "users": {"admin": 1} if running else {}, "nodes": nodes}


@dataclass
class Planned:
    commands: list[Any]  # as the operation yielded them
    serialised: list[Any]  # as pyinfra-testing writes them in case files
    node: Any
    headscale_host: Any
    state: FakeState


def _plan_joined(node_info: dict, server_info: dict, **kwargs: Any) -> Planned:
    state = FakeState()
    headscale_host = _host(state, "cloud", {"headscale.Headscale": server_info})
    node = _host(state, "t420", {"tailscale.Tailscale": node_info})
    arguments = {"login_server": LOGIN, "headscale_host": headscale_host, "tags": ["tag:k3s"], "hostname": "t420"}
    arguments.update(kwargs)
    with ctx_state.use(state), ctx_host.use(node):
        commands = list(tailscale.joined._inner(**arguments))
    return Planned(commands, _shown(commands, parse_commands(list(commands))), node, headscale_host, state)


def _shown(commands: list[Any], serialised: list[Any]) -> list[Any]:
    """Shell commands as their text; a function command as its name and its text arguments (the other host's
    command and the step it is named by, for a cross-host step)."""
    shown: list[Any] = []
    for command, item in zip(commands, serialised, strict=True):
        if isinstance(command, FunctionCommand):
            texts = [_raw(arg) if isinstance(arg, StringCommand) else arg for arg in command.args]
            shown.append([command.function.__name__, *[text for text in texts if isinstance(text, str)]])
        else:
            shown.append(item)
    return shown


RESTART_TAILSCALED = (
    "systemctl restart tailscaled.service && for i in $(seq 120); do tailscale status --json 2>/dev/null | grep -qE "
    "'\"BackendState\": \"(Running|Starting)\"' && exit 0; sleep 0.5; done; "
    "echo 'tailscaled did not come back after its restart' >&2; exit 1"
)


def _join(flags: str = DEFAULT_FLAGS, was_online: bool = False, hostname: str = "t420") -> list[Any]:
    """The commands of a (re-)join with a fresh pre-auth key, then the wait until headscale lists the node; a node
    that was online under a registration headscale no longer has restarts tailscaled in between."""
    return [
        f"install -d -m 0700 /run/portable-k3s && install -m 0600 /dev/null {AUTHKEY_FILE}",
        ["_upload_fresh_key"],
        f"tailscale up --reset --login-server={LOGIN} --auth-key=file:{AUTHKEY_FILE} --timeout=60s {flags}"
        f" ; rc=$?; rm -f {AUTHKEY_FILE} ; exit $rc",
        *([RESTART_TAILSCALED] if was_online else []),
        ["_wait_until_listed", hostname],
    ]


# tailscale.joined: planning


def test_joined_converged_node_is_left_alone() -> None:
    planned = _plan_joined(_tailscale_info(), _headscale_info(OTHER_KEY, NODE_KEY))
    assert planned.serialised == []
    assert planned.node.noop_description == "t420 is in the tailnet as 100.64.0.2"


def test_joined_node_waiting_for_a_relay_is_not_rejoined() -> None:
    """BackendState "Starting" (logged in, no relay or peer yet, e.g. after a reboot that restarted headscale
    too): the node is in the tailnet; a re-join would only cost it its node key."""
    planned = _plan_joined(_tailscale_info("Starting"), _headscale_info(NODE_KEY))
    assert planned.serialised == []
    assert planned.node.noop_description == "t420 is in the tailnet (Starting: waiting for a relay or a peer)"


def test_joined_converged_exit_node_compares_routes_in_any_order() -> None:
    info = _tailscale_info(AdvertiseRoutes=["::/0", "192.168.50.0/24", "0.0.0.0/0"], RouteAll=True)
    planned = _plan_joined(
        info, _headscale_info(NODE_KEY), exit_node=True, routes=["192.168.50.0/24"], accept_routes=True
    )
    assert planned.serialised == []
    assert planned.node.noop_description == "t420 is in the tailnet as 100.64.0.2"


def test_joined_leaves_the_routes_to_k3s_in_its_native_mode() -> None:
    """k3s's flannel (native tailnet mode) accepts routes and advertises the node's pod subnet: not a drift."""
    info = _tailscale_info(AdvertiseRoutes=["10.42.1.0/24"], RouteAll=True)
    planned = _plan_joined(info, _headscale_info(NODE_KEY), routes_by_k3s=True)
    assert planned.serialised == []
    changed = _plan_joined(_tailscale_info(Hostname="debian", RouteAll=True), _headscale_info(NODE_KEY),
                           routes_by_k3s=True)
    assert changed.serialised == ["tailscale set --hostname=t420 --accept-dns=true --snat-subnet-routes=true"]


def test_joined_in_k3s_native_mode_joins_without_route_flags() -> None:
    info = _tailscale_info("NeedsLogin", node_key="nodekey:" + "0" * 64)
    planned = _plan_joined(info, _headscale_info(OTHER_KEY), routes_by_k3s=True)
    assert planned.serialised == _join("--hostname=t420 --accept-dns=true --snat-subnet-routes=true")


@pytest.mark.parametrize(
    ("prefs", "kwargs", "flags"),
    [
        pytest.param({}, {"accept_routes": True}, DEFAULT_FLAGS.replace("routes=false", "routes=true"), id="routes"),
        pytest.param({"Hostname": "debian"}, {}, DEFAULT_FLAGS, id="hostname"),
        pytest.param(
            {"CorpDNS": True}, {"accept_dns": False}, DEFAULT_FLAGS.replace("dns=true", "dns=false"), id="dns"
        ),
        pytest.param(
            {"AdvertiseRoutes": ["192.168.50.0/24"]},
            {"exit_node": True, "routes": ["192.168.50.0/24"]},
            DEFAULT_FLAGS.replace("exit-node=false", "exit-node=true") + "192.168.50.0/24",
            id="becomes-exit-node",
        ),
        pytest.param(
            {"AdvertiseRoutes": ["10.0.0.0/24"]},
            {"routes": ["10.1.0.0/24", "10.0.0.0/24"]},
            DEFAULT_FLAGS + "10.1.0.0/24,10.0.0.0/24",
            id="new-subnet",
        ),
        pytest.param({"AdvertiseRoutes": ["10.0.0.0/24"]}, {}, DEFAULT_FLAGS, id="subnet-withdrawn"),
    ],
)
def test_joined_changed_settings_are_applied_with_tailscale_set(prefs: dict, kwargs: dict, flags: str) -> None:
    planned = _plan_joined(_tailscale_info(**prefs), _headscale_info(NODE_KEY), **kwargs)
    # All settings are passed (tailscale set leaves unnamed ones alone), never a re-join.
    assert planned.serialised == [f"tailscale set {flags}"]


def test_joined_node_that_needs_login_joins_with_a_fresh_key() -> None:
    info = _tailscale_info("NeedsLogin", node_key="nodekey:" + "0" * 64, ControlURL="https://controlplane.tailscale.com")
    planned = _plan_joined(info, _headscale_info(OTHER_KEY))
    assert planned.serialised == _join()
    # Planning mints nothing: the key is minted only when the function runs, at execution time.
    assert isinstance(planned.commands[1], FunctionCommand)
    assert planned.node.noop_description is None


def test_joined_node_unknown_to_the_running_server_rejoins() -> None:
    """A node whose key headscale no longer knows (its database was reset, or the node was deleted): after the
    re-join, tailscaled restarts to report its DERP home and endpoints for the new registration."""
    planned = _plan_joined(_tailscale_info(), _headscale_info(OTHER_KEY))
    assert planned.serialised == _join(was_online=True)


def test_joined_fresh_disk_deletes_its_stale_registration_first() -> None:
    """The host's disk was replaced (or headscale restored from a backup): headscale still has a registration with
    this hostname and one of its tags that the host can never use again. It is deleted before the join, or headscale
    would name the new one t420-abc123; a same-named node without any of the host's tags is not touched."""
    server = _headscale_info(OTHER_KEY, "nodekey:" + "e" * 64)
    server["nodes"][0]["name"] = server["nodes"][1]["name"] = "t420"
    server["nodes"][1]["tags"] = ["tag:phone"]
    info = _tailscale_info("NeedsLogin", node_key="nodekey:" + "0" * 64)
    planned = _plan_joined(info, server)
    assert planned.serialised == [["_run_step", "headscale nodes delete --force --identifier 1",
                                   "deleting the stale registration 1 of t420"], *_join()]
    ran: list[str] = []
    planned.headscale_host.run_shell_command = lambda command, **kw: (ran.append(str(command)), (True, _output()))[1]
    step = planned.commands[0]
    step.function(planned.state, planned.node, *step.args)
    assert ran == ["headscale nodes delete --force --identifier 1"]


def test_joined_node_on_another_control_server_rejoins() -> None:
    info = _tailscale_info(ControlURL="https://old-hs.example.org")
    planned = _plan_joined(info, _headscale_info(NODE_KEY))
    assert planned.serialised == _join(was_online=True)


def test_joined_stopped_node_rejoins() -> None:
    planned = _plan_joined(_tailscale_info("Stopped", WantRunning=False), _headscale_info(NODE_KEY))
    assert planned.serialised == _join()


def test_joined_trusts_a_running_node_while_headscale_is_not_running_at_plan_time() -> None:
    """First run of the server (or it is down): the node cannot be checked against it, so it is trusted."""
    planned = _plan_joined(_tailscale_info(), _headscale_info(running=False))
    assert planned.serialised == []
    assert planned.node.noop_description == "t420 is in the tailnet as 100.64.0.2"


def test_joined_applies_settings_while_headscale_is_not_running_at_plan_time() -> None:
    planned = _plan_joined(_tailscale_info(Hostname="old-name"), _headscale_info(running=False))
    assert planned.serialised == [f"tailscale set {DEFAULT_FLAGS}"]


def test_joined_node_that_needs_login_joins_while_headscale_is_not_running_at_plan_time() -> None:
    planned = _plan_joined(_tailscale_info("NeedsLogin", node_key=None), _headscale_info(running=False))
    assert planned.serialised == _join()


def test_joined_flags_for_an_exit_node_with_routes() -> None:
    planned = _plan_joined(
        _tailscale_info("NeedsLogin"),
        _headscale_info(),
        tags=["tag:entrance", "tag:exit"],
        hostname="cloud",
        accept_dns=False,
        accept_routes=True,
        exit_node=True,
        routes=["192.168.50.0/24"],
    )
    assert planned.serialised == _join(
        "--hostname=cloud --accept-dns=false --snat-subnet-routes=true --accept-routes=true --advertise-exit-node=true"
        " --advertise-routes=192.168.50.0/24", hostname="cloud",
    )


def test_joined_node_with_other_tags_is_not_converged() -> None:
    server = _headscale_info(NODE_KEY)
    assert server["nodes"][0]["tags"] == ["tag:k3s"]
    planned = _plan_joined(_tailscale_info(), server, tags=["tag:exit", "tag:k3s"])
    assert planned.serialised != []
    assert planned.node.noop_description is None


@pytest.mark.parametrize("tags", [[], ["k3s"], ["tag:k3s", "exit"]])
def test_joined_refuses_bad_tags_before_reading_facts(tags: list[str]) -> None:
    state = FakeState()
    node = _host(state, "t420", {})  # no facts: reading one would be a KeyError
    with ctx_state.use(state), ctx_host.use(node), pytest.raises(OperationValueError) as raised:
        list(tailscale.joined._inner(login_server=LOGIN, headscale_host=node, tags=tags, hostname="t420"))
    assert raised.value.args[0] == f"tags: {tags!r} (expected at least one tag:NAME)"


# tailscale.joined: the pre-auth key, at execution time


def _run_upload(planned: Planned, mint: tuple[bool, CommandOutput], uploaded: bool = True) -> None:
    planned.headscale_host.run_shell_command = mock.Mock(return_value=mint)
    planned.node.put_file = mock.Mock(return_value=uploaded)
    planned.node.run_shell_command = mock.Mock(return_value=(True, _output()))
    function = planned.commands[1]
    function.function(planned.state, planned.node, *function.args, **function.kwargs)


def test_upload_fresh_key_mints_on_the_headscale_host_and_uploads_it_to_the_node() -> None:
    planned = _plan_joined(_tailscale_info("NeedsLogin"), _headscale_info(), tags=["tag:entrance", "tag:exit"])
    _run_upload(planned, (True, _output(PREAUTH_JSON)))

    (mint_call,) = planned.headscale_host.run_shell_command.call_args_list
    assert _raw(mint_call.args[0]) == (
        "headscale preauthkeys create --expiration 15m --tags tag:entrance,tag:exit -o json"
    )
    # The key is in that command's output: neither the command's output nor the upload is printed.
    assert mint_call.kwargs["print_output"] is False
    assert mint_call.kwargs["print_input"] is False

    (upload_call,) = planned.node.put_file.call_args_list
    source, destination = upload_call.args
    assert destination == AUTHKEY_FILE
    assert isinstance(source, StringIO) and source.getvalue() == PREAUTH_KEY
    assert upload_call.kwargs["print_output"] is False
    assert upload_call.kwargs["print_input"] is False
    planned.node.run_shell_command.assert_not_called()

    # The key never reaches a command line: tailscale reads it from the 0600 file, which is removed after.
    up = planned.serialised[2]
    assert PREAUTH_KEY not in up and f"--auth-key=file:{AUTHKEY_FILE}" in up
    assert up.endswith(f"rm -f {AUTHKEY_FILE} ; exit $rc")


def test_upload_fresh_key_stops_when_minting_fails() -> None:
    planned = _plan_joined(_tailscale_info("NeedsLogin"), _headscale_info())
    failure = (False, _output(stderr="Error: failed to create preauth key: user not found"))
    with pytest.raises(OperationError) as raised:
        _run_upload(planned, failure)
    assert raised.value.args[0] == (
        "minting a pre-auth key on cloud failed: Error: failed to create preauth key: user not found"
    )
    planned.node.put_file.assert_not_called()
    # The empty key file made for it goes: no key file is left for a join that did not happen.
    (removal,) = planned.node.run_shell_command.call_args_list
    assert _raw(removal.args[0]) == f"rm -f {AUTHKEY_FILE}"


def test_upload_fresh_key_says_so_when_the_headscale_host_was_lost() -> None:
    planned = _plan_joined(_tailscale_info("NeedsLogin"), _headscale_info())
    planned.headscale_host.run_shell_command = mock.Mock(side_effect=OSError(113, "No route to host"))
    planned.node.put_file = mock.Mock(return_value=True)
    planned.node.run_shell_command = mock.Mock(return_value=(True, _output()))
    function = planned.commands[1]
    with pytest.raises(OperationError) as raised:
        function.function(planned.state, planned.node, *function.args, **function.kwargs)
    assert raised.value.args[0] == (
        "minting a pre-auth key on cloud failed: the connection was lost (OSError: [Errno 113] No route to host); "
        "this node joins at the next run once cloud is back"
    )
    assert planned.node.run_shell_command.call_count == 1


@pytest.mark.parametrize("stdout", ["", "null", '{"error": "unexpected"}', "not json"])
def test_upload_fresh_key_stops_when_headscale_returns_no_key(stdout: str) -> None:
    planned = _plan_joined(_tailscale_info("NeedsLogin"), _headscale_info())
    with pytest.raises(OperationError) as raised:
        _run_upload(planned, (True, _output(stdout)))
    assert raised.value.args[0] == "headscale on cloud returned no pre-auth key"
    planned.node.put_file.assert_not_called()


def test_upload_fresh_key_stops_when_the_upload_fails() -> None:
    planned = _plan_joined(_tailscale_info("NeedsLogin"), _headscale_info())
    with pytest.raises(OSError, match="uploading the pre-auth key to t420 failed"):
        _run_upload(planned, (True, _output(PREAUTH_JSON)), uploaded=False)


def test_mint_preauth_key_returns_the_key_hidden() -> None:
    state = FakeState()
    server = _host(state, "cloud")
    server.run_shell_command = mock.Mock(return_value=(True, _output(PREAUTH_JSON)))
    key = headscale.mint_preauth_key(server, ["tag:k3s"], expiration="5m")
    assert key.unmask() == PREAUTH_KEY
    assert PREAUTH_KEY not in str(key) and PREAUTH_KEY not in repr(key)
    (call,) = server.run_shell_command.call_args_list
    assert _raw(call.args[0]) == "headscale preauthkeys create --expiration 5m --tags tag:k3s -o json"


@pytest.mark.parametrize("tags", [[], ["k3s"]])
def test_mint_preauth_key_refuses_untagged_keys(tags: list[str]) -> None:
    server = mock.Mock()
    with pytest.raises(OperationValueError):
        headscale.mint_preauth_key(server, tags)
    server.run_shell_command.assert_not_called()


# headscale.dns_records: the records written at execution time

NODES_JSON = json.dumps(
    [
        {
            "id": 1,
            "node_key": OTHER_KEY,
            "ip_addresses": ["100.64.0.1", "fd7a:115c:a1e0::1"],
            "name": "cloud",
            "given_name": "cloud",
            "online": True,
            "tags": ["tag:entrance", "tag:exit"],
        },
        {
            "id": 5,
            "node_key": NODE_KEY,
            "ip_addresses": ["fd7a:115c:a1e0::5", "100.64.0.5"],
            "name": "debian",
            "given_name": "master",
            "online": True,
            "tags": ["tag:k3s"],
        },
    ],
    indent="\t",
)


def _plan_records(**kwargs: Any) -> tuple[Any, FunctionCommand, FakeState]:
    state = FakeState()
    server = _host(state, "cloud", {"headscale.Headscale": _headscale_info(OTHER_KEY)})
    with ctx_state.use(state), ctx_host.use(server):
        commands = list(headscale.dns_records._inner(names=["pass.example.org", "git.example.org"], **kwargs))
    (function,) = commands
    assert isinstance(function, FunctionCommand)
    return server, function, state


def _run_records(server: Any, function: FunctionCommand, state: FakeState, nodes_stdout: str) -> None:
    server.run_shell_command = mock.Mock(side_effect=[(True, _output(nodes_stdout)), (True, _output())])
    server.put_file = mock.Mock(return_value=True)
    function.function(state, server, *function.args, **function.kwargs)


def test_dns_records_for_a_node_that_joined_during_the_run() -> None:
    server, function, state = _plan_records(node="master")
    _run_records(server, function, state, NODES_JSON)

    lookup, install = server.run_shell_command.call_args_list
    assert _raw(lookup.args[0]) == "headscale nodes list -o json"
    (upload,) = server.put_file.call_args_list
    source, destination = upload.args
    # Matched by its given name; its IPv4 address, whatever the order headscale lists them in.
    assert source.getvalue() == headscale.records_text(["git.example.org", "pass.example.org"], "100.64.0.5")
    assert json.loads(source.getvalue()) == [
        {"name": "git.example.org", "type": "A", "value": "100.64.0.5"},
        {"name": "pass.example.org", "type": "A", "value": "100.64.0.5"},
    ]
    staged = "/var/lib/headscale/extra-records.json.portable-k3s-new"
    assert destination == staged
    assert _raw(install.args[0]) == (
        f"chown headscale:headscale {staged} && chmod 0640 {staged}"
        f" && mv -f {staged} /var/lib/headscale/extra-records.json"
    )


@pytest.mark.parametrize("stdout", ["null", "[]", NODES_JSON.replace('"master"', '"master-2"')])
def test_dns_records_stop_when_the_node_is_still_not_in_the_tailnet(stdout: str) -> None:
    server, function, state = _plan_records(node="master")
    with pytest.raises(OperationError) as raised:
        _run_records(server, function, state, stdout)
    assert raised.value.args[0] == "node 'master' is not in the tailnet: cannot point MagicDNS records at it"
    server.put_file.assert_not_called()


def test_dns_records_at_execution_quote_a_custom_path() -> None:
    server, function, state = _plan_records(node="master", path="/srv/head scale/records.json")
    _run_records(server, function, state, NODES_JSON)
    _, install = server.run_shell_command.call_args_list
    staged = "'/srv/head scale/records.json.portable-k3s-new'"
    assert _raw(install.args[0]) == (
        f"chown headscale:headscale {staged} && chmod 0640 {staged} && mv -f {staged} '/srv/head scale/records.json'"
    )


def test_dns_records_render_one_a_record_per_name_sorted() -> None:
    text = headscale.records_text(["b.example.org", "a.example.org"], "100.64.0.9")
    assert text.endswith("}\n]\n")
    assert [record["name"] for record in json.loads(text)] == ["a.example.org", "b.example.org"]
    assert headscale.records_text([], "100.64.0.9") == "[]\n"


# Executing with sudo: the functions talk to the connections directly, so they must pass the operation's
# connector arguments on themselves.


def _plan_with_sudo(op: Any, facts: dict, name: str = "t420", **kwargs: Any) -> tuple[Any, Any, FakeState]:
    state = FakeState()
    state.config.SUDO = True
    host = _host(state, name, facts, {"_sudo": True})
    host.current_op_global_arguments = {"_sudo": True}
    with ctx_state.use(state), ctx_host.use(host):
        commands = list(op._inner(**kwargs))
    functions = [command for command in commands if isinstance(command, FunctionCommand)]
    assert functions, "no execution-time function"
    return host, functions[0], state  # the first: a join's key upload, or the operation's only one


def test_upload_fresh_key_uses_sudo_when_the_operation_does() -> None:
    state = FakeState()
    server = _host(state, "cloud", {"headscale.Headscale": _headscale_info()}, {"_sudo": True})
    server.run_shell_command = mock.Mock(return_value=(True, _output(PREAUTH_JSON)))
    node, function, state = _plan_with_sudo(
        tailscale.joined,
        {"tailscale.Tailscale": _tailscale_info("NeedsLogin")},
        login_server=LOGIN,
        headscale_host=server,
        tags=["tag:k3s"],
        hostname="t420",
    )
    node.put_file = mock.Mock(return_value=True)
    function.execute(state, node, {"_sudo": True})
    assert server.run_shell_command.call_args.kwargs.get("_sudo") is True
    assert node.put_file.call_args.kwargs.get("_sudo") is True


def test_dns_records_function_uses_sudo_when_the_operation_does() -> None:
    server, function, state = _plan_with_sudo(
        headscale.dns_records,
        {"headscale.Headscale": _headscale_info()},
        name="cloud",
        names=["pass.example.org"],
        node="master",
    )
    server.run_shell_command = mock.Mock(side_effect=[(True, _output(NODES_JSON)), (True, _output())])
    server.put_file = mock.Mock(return_value=True)
    function.execute(state, server, {"_sudo": True})
    assert all(call.kwargs.get("_sudo") is True for call in server.run_shell_command.call_args_list)
    assert server.put_file.call_args.kwargs.get("_sudo") is True


# deploys.headscale: tags and the ACL policy


@pytest.mark.parametrize(
    ("groups", "extra", "tags"),
    [
        ({"k3s_servers"}, None, ["tag:k3s"]),
        ({"k3s_agents"}, [], ["tag:k3s"]),
        ({"k3s_servers", "k3s_agents"}, None, ["tag:k3s"]),
        ({"headscale", "entrance"}, None, ["tag:entrance"]),
        ({"exit_nodes"}, None, ["tag:exit"]),
        ({"headscale", "entrance", "exit_nodes"}, None, ["tag:entrance", "tag:exit"]),
        ({"k3s_agents", "exit_nodes"}, None, ["tag:exit", "tag:k3s"]),
        ({"headscale"}, None, ["tag:infra"]),
        (set(), None, ["tag:infra"]),
        ({"k3s_agents"}, ["tag:nas", "tag:k3s"], ["tag:k3s", "tag:nas"]),
        ({"headscale"}, ["tag:nas"], ["tag:nas"]),
    ],
)
def test_host_tags(groups: set[str], extra: list[str] | None, tags: list[str]) -> None:
    assert host_tags(groups, extra) == tags


def _policy(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "admins": ["admin", "ops"],
        "ingress_ports": [443, 80, 2222],
        "routes": {"192.168.50.0/24": ["tag:exit"], "10.10.0.0/16": ["tag:nas", "tag:k3s"]},
        "extra_tags": ["tag:nas"],
    }
    arguments.update(overrides)
    return tailnet_policy(**arguments)


def _grants_from(policy: dict[str, Any], source: str) -> list[dict[str, Any]]:
    return [grant for grant in policy["grants"] if source in grant["src"]]


def test_policy_k3s_nodes_reach_each_other_on_everything() -> None:
    assert _grants_from(_policy(), "tag:k3s") == [{"src": ["tag:k3s"], "dst": ["tag:k3s"], "ip": ["*"]}]


def test_policy_entrance_reaches_k3s_nodes_only_on_the_ingress_ports() -> None:
    assert _grants_from(_policy(), "tag:entrance") == [
        {"src": ["tag:entrance"], "dst": ["tag:k3s"], "ip": ["tcp:80", "tcp:443", "tcp:2222"]}
    ]


def test_policy_admins_reach_everything() -> None:
    policy = _policy()
    assert policy["groups"] == {"group:admins": ["admin@", "ops@"]}
    assert _grants_from(policy, "group:admins") == [{"src": ["group:admins"], "dst": ["*"], "ip": ["*"]}]


def test_policy_every_node_and_user_may_use_the_exit_nodes() -> None:
    internet = [grant for grant in _policy()["grants"] if "autogroup:internet" in grant["dst"]]
    assert internet == [{"src": ["autogroup:member", "autogroup:tagged"], "dst": ["autogroup:internet"], "ip": ["*"]}]


def test_policy_no_other_access() -> None:
    """Only the k3s nodes, the entrance and the admins are sources of grants to tailnet nodes."""
    policy = _policy()
    to_nodes = [grant for grant in policy["grants"] if grant["dst"] != ["autogroup:internet"]]
    assert sorted(source for grant in to_nodes for source in grant["src"]) == [
        "group:admins",
        "tag:entrance",
        "tag:k3s",
    ]


def test_policy_auto_approves_exit_nodes_and_the_inventory_routes() -> None:
    assert _policy()["autoApprovers"] == {
        "exitNode": ["tag:exit"],
        "routes": {"10.10.0.0/16": ["tag:k3s", "tag:nas"], "192.168.50.0/24": ["tag:exit"]},
    }
    assert _policy(routes={})["autoApprovers"] == {"exitNode": ["tag:exit"], "routes": {}}


def test_policy_k3s_native_mode_routes_pods_through_the_tailnet() -> None:
    """k3s's native tailnet mode: each node advertises its pod subnet (approved automatically) and the k3s
    nodes reach the pod network; nobody else does."""
    policy = _policy(pod_cidrs=["10.42.0.0/16"])
    assert _grants_from(policy, "tag:k3s") == [
        {"src": ["tag:k3s"], "dst": ["tag:k3s"], "ip": ["*"]},
        {"src": ["tag:k3s"], "dst": ["10.42.0.0/16"], "ip": ["*"]},
    ]
    assert policy["autoApprovers"]["routes"]["10.42.0.0/16"] == ["tag:k3s"]
    assert [g for g in policy["grants"] if "10.42.0.0/16" in g["dst"]] == _grants_from(policy, "tag:k3s")[1:]


def test_policy_extra_grants_are_appended_in_order() -> None:
    extra = [
        {"src": ["tag:k3s"], "dst": ["tag:nas"], "ip": ["tcp:2049"]},
        {"src": ["group:admins"], "dst": ["tag:nas"], "ip": ["tcp:22"]},
    ]
    generated = _policy()["grants"]
    assert _policy(extra_grants=extra)["grants"] == [*generated, *extra]


def test_policy_every_tag_used_is_owned_by_the_admins() -> None:
    extra = [{"src": ["tag:k3s"], "dst": ["tag:nas"], "ip": ["tcp:2049"]}]
    policy = _policy(extra_grants=extra)
    used = {
        name
        for grant in policy["grants"]
        for name in grant["src"] + grant["dst"]
        if name.startswith("tag:")
    }
    used |= set(policy["autoApprovers"]["exitNode"])
    used |= {tag for tags in policy["autoApprovers"]["routes"].values() for tag in tags}
    assert used <= set(policy["tagOwners"])
    assert set(BUILTIN_TAGS) | {"tag:nas"} == set(policy["tagOwners"])
    assert all(owners == ["group:admins"] for owners in policy["tagOwners"].values())


def test_policy_is_json() -> None:
    policy = _policy(extra_grants=[{"src": ["tag:k3s"], "dst": ["tag:nas"], "ip": ["tcp:2049"]}])
    assert json.loads(json.dumps(policy)) == policy


def _wait_function(server_stdouts: list[str]) -> tuple[Any, Any, Any]:
    planned = _plan_joined(_tailscale_info("NeedsLogin"), _headscale_info(OTHER_KEY))
    (wait,) = [c for c in planned.commands if isinstance(c, FunctionCommand) and c.function.__name__ ==
               "_wait_until_listed"]
    status = json.dumps({"Self": {"PublicKey": NODE_KEY}})
    planned.node.run_shell_command = mock.Mock(return_value=(True, _output(status)))
    planned.headscale_host.run_shell_command = mock.Mock(
        side_effect=[(True, _output(stdout)) for stdout in server_stdouts]
    )
    return planned, wait, planned.headscale_host.run_shell_command


def test_wait_until_listed_returns_once_headscale_lists_the_new_node_key() -> None:
    planned, wait, server_calls = _wait_function(["[]", json.dumps([{"node_key": NODE_KEY}])])
    with mock.patch("portable_k3s.operations.tailscale.gevent.sleep"):
        wait.execute(planned.state, planned.node, {})
    assert server_calls.call_count == 2


def test_wait_until_listed_gives_up_with_a_clear_error() -> None:
    planned, wait, _ = _wait_function(["[]"] * 100)
    clock = iter(range(0, 1000, 5))
    with mock.patch("portable_k3s.operations.tailscale.gevent.sleep"), \
            mock.patch("portable_k3s.operations.tailscale.time.monotonic", lambda: next(clock)):
        with pytest.raises(OSError, match="joined, but headscale on cloud does not list it"):
            wait.execute(planned.state, planned.node, {})


def test_joined_k3s_node_keeps_tailnet_source_addresses() -> None:
    """A k3s node joins with --snat-subnet-routes=false and a joined one that masquerades is switched with tailscale
    set: Traefik's host ports must see the entrance's tailnet address, the one it takes the PROXY protocol from."""
    planned = _plan_joined(_tailscale_info("NeedsLogin"), _headscale_info(), snat=False)
    assert "--snat-subnet-routes=false" in planned.serialised[2]
    switched = _plan_joined(_tailscale_info(), _headscale_info(OTHER_KEY, NODE_KEY), snat=False)
    assert switched.serialised == [f"tailscale set {DEFAULT_FLAGS.replace('routes=true', 'routes=false', 1)}"]
    assert _plan_joined(_tailscale_info(NoSNAT=True), _headscale_info(OTHER_KEY, NODE_KEY), snat=False).serialised == []


@pytest.mark.parametrize(("states", "stale"), [
    ({"tailscaled.service": {"active": True, "enabled": "enabled", "since": 200},
      "k3s.service": {"active": True, "enabled": "enabled", "since": 300}}, False),
    ({"tailscaled.service": {"active": True, "enabled": "enabled", "since": 400},
      "k3s-agent.service": {"active": True, "enabled": "enabled", "since": 300}}, True),
    ({"tailscaled.service": {"active": True, "enabled": "enabled", "since": 400},
      "k3s-agent.service": {"active": False, "enabled": "enabled"}}, False),
    ({"tailscaled.service": {"active": False, "enabled": "enabled"},
      "k3s.service": {"active": True, "enabled": "enabled", "since": 300}}, False),
    ({}, False),
])
def test_k3s_is_stale_when_it_has_run_since_before_tailscaled_last_started(states: dict, stale: bool) -> None:
    from portable_k3s.deploys.tailscale import k3s_older_than_tailscaled

    assert k3s_older_than_tailscaled(states) is stale


def test_joined_node_with_other_tags_is_retagged_on_headscale_as_a_cross_host_step() -> None:
    server = _headscale_info(NODE_KEY)
    server["nodes"][0]["tags"] = ["tag:old"]
    planned = _plan_joined(_tailscale_info(), server, tags=["tag:k3s", "tag:nas"])
    assert planned.serialised == [["_run_step", "headscale nodes tag --identifier 1 --tags tag:k3s,tag:nas",
                                   "re-tagging t420"]]
    planned.headscale_host.run_shell_command = mock.Mock(return_value=(False, _output(stderr="Error: no such tag")))
    step = planned.commands[0]
    with pytest.raises(OperationError) as raised:
        step.function(planned.state, planned.node, *step.args)
    assert raised.value.args[0] == "re-tagging t420 on cloud failed: Error: no such tag"
