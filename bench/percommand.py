"""Time N ``true`` commands over one pyinfra SSH connection, with Nagle on and then with TCP_NODELAY.

``python bench/percommand.py HOSTNAME PORT KEY KNOWN_HOSTS [COUNT]`` prints JSON: milliseconds per command
(median of the commands, and mean) for each setting, each on a fresh connection.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # as pyinfra's CLI does: the measurement runs what the CLI runs

import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from pyinfra.api import Config, Inventory, State  # noqa: E402
from pyinfra.api.command import StringCommand  # noqa: E402
from pyinfra.api.connect import connect_all, disconnect_all  # noqa: E402

from portable_k3s.connection import connection_socket, ssh_tcp_options  # noqa: E402


def measure(data: dict, count: int, nodelay: bool) -> dict:
    state = State(Inventory(([("bench-host", data)], {})), Config())
    connect_all(state)
    try:
        (host,) = state.inventory
        if not host.connected:
            raise SystemExit(f"could not connect to {data['ssh_hostname']}:{data['ssh_port']}")
        if nodelay:
            assert ssh_tcp_options(state) == [host]
        sock = connection_socket(host)
        assert sock is not None
        host.run_shell_command(StringCommand("true"))  # warm the connection up
        times = []
        for _ in range(count):
            started = time.perf_counter()
            ok, _ = host.run_shell_command(StringCommand("true"))
            times.append(time.perf_counter() - started)
            assert ok
        return {"median_ms": statistics.median(times) * 1000, "mean_ms": statistics.fmean(times) * 1000}
    finally:
        disconnect_all(state)


def main() -> None:
    hostname, port, key, known_hosts = sys.argv[1:5]
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    data = {
        "ssh_hostname": hostname, "ssh_port": int(port), "ssh_user": "root", "ssh_key": key,
        "ssh_known_hosts_file": known_hosts, "ssh_strict_host_key_checking": "yes",
    }
    print(json.dumps({
        "count": count,
        "nagle": measure(data, count, nodelay=False),
        "nodelay": measure(data, count, nodelay=True),
    }))


if __name__ == "__main__":
    main()
