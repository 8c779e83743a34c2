"""TCP_NODELAY on the live socket of real pyinfra SSH connections to lab hosts: through the API and the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import StringCommand
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.connectors.ssh import SSHConnector

from portable_k3s.connection import connection_socket, ssh_tcp_options
from portable_k3s.lab import Lab
from portable_k3s.lab.inventory import lab_groups

REPO = Path(__file__).resolve().parents[2]

# A deploy file for the real CLI (which runs it once per host): it records the socket option of every connected
# host before the library's setup ran, and its own host's after, into the JSON lines file named by its data.
RECORDING_DEPLOY = '''
import json, socket
from pyinfra import host, state
from portable_k3s.connection import connection_socket, ssh_tcp_options

def nodelay(h):
    sock = connection_socket(h)
    return None if sock is None else sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

before = {h.name: nodelay(h) for h in state.inventory}
ssh_tcp_options()
with open(host.data.nodelay_record, "a") as f:
    f.write(json.dumps({"host": host.name, "connector": type(host.connector).__name__,
                        "before": before, "after": nodelay(host)}) + "\\n")
'''


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def _lab_state(lab: Lab) -> State:
    groups = lab_groups(lab.config)
    hosts = {name: data for members in groups.values() for name, data in members}
    state = State(Inventory((list(hosts.items()), {})), Config())
    connect_all(state)
    return state


def _time_true(host, count: int = 20) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for _ in range(count):
        ok, _ = host.run_shell_command(StringCommand("true"))
        assert ok
    return (time.perf_counter() - started) / count


def test_the_live_ssh_socket_gets_nodelay(lab: Lab) -> None:
    state = _lab_state(lab)
    try:
        hosts = list(state.inventory)
        assert len(hosts) == 4 and all(h.connected for h in hosts)
        sockets = {}
        for host in hosts:
            assert isinstance(host.connector, SSHConnector)
            sock = connection_socket(host)
            assert sock is not None, f"{host.name}: no TCP socket under the SSH connection"
            assert sock.getpeername()[1] == 22
            assert _nodelay(sock) == 0, "pyinfra's SSH connection leaves Nagle on (else this test proves nothing)"
            sockets[host.name] = sock
        slow = _time_true(hosts[0])

        assert sorted(h.name for h in ssh_tcp_options(state)) == sorted(sockets)
        for host in hosts:
            assert connection_socket(host) is sockets[host.name], "the same live socket, not a new connection"
            assert _nodelay(sockets[host.name]) != 0
            # A host that goes silent is given up after connection_lost_after (90 s by default).
            assert sockets[host.name].getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 90_000
            assert sockets[host.name].getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        fast = _time_true(hosts[0])
        # The point of it: a command on an open connection no longer waits for a delayed ACK (~40 ms).
        assert fast < slow, f"per command: {fast * 1000:.1f} ms with TCP_NODELAY, {slow * 1000:.1f} ms without"
        assert fast < 0.025, f"{fast * 1000:.1f} ms per command with TCP_NODELAY"

        # A host that connects again later gets it from the state callback, without another call.
        again = hosts[1]
        again.disconnect()
        again.connector.client.close()  # type: ignore[attr-defined]
        again.connect(raise_exceptions=True)
        fresh = connection_socket(again)
        assert fresh is not None and fresh is not sockets[again.name]
        assert _nodelay(fresh) != 0
        assert again.run_shell_command(StringCommand("true"))[0]
    finally:
        disconnect_all(state)


def test_the_cli_gets_it_from_the_library(lab: Lab, tmp_path: Path) -> None:
    deploy = tmp_path / "record_nodelay.py"
    deploy.write_text(RECORDING_DEPLOY)
    record = tmp_path / "nodelay.jsonl"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), "inventories/lab.py", str(deploy), "-y",
         "--data", f"nodelay_record={record}"],
        cwd=REPO, env={**os.environ, "PORTABLE_K3S_LAB_STATE_DIR": str(lab.state_dir)},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(r["host"] for r in rows) == ["h1", "h2", "h3", "h4"]
    # The CLI connected every host before it ran the deploy file for the first one: all with Nagle on.
    assert rows[0]["before"] == {"h1": 0, "h2": 0, "h3": 0, "h4": 0}, rows[0]
    for row in rows:
        assert row["connector"] == "SSHConnector"
        assert row["after"] not in (None, 0), row
