"""The real pyinfra CLI, with every remote round trip counted: ``python bench/counted_pyinfra.py <pyinfra args>``.

It wraps the SSH connector's ``run_shell_command``, ``put_file`` and ``get_file`` and records, per host, each
call's deploy and operation (from pyinfra's own context: the operation being evaluated or executed on that host,
else the deploy whose body is running), the stage (prepare: facts read while planning; execute) and the time
spent waiting for it. The counts go, as JSON, to the file named by ``PK3S_BENCH_COUNTS`` when pyinfra exits.

``PK3S_BENCH_NAGLE=1`` keeps Nagle's algorithm on (the library's TCP_NODELAY setup does nothing), to measure
what the option is worth. ``PK3S_BENCH_PROFILE=<path>`` profiles the whole run (cProfile on CPU time, all
greenlets of the one thread: where pyinfra's own CPU goes, not the lab hosts') and writes the stats there.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # first, as pyinfra's CLI does

import atexit  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from typing import Any  # noqa: E402

from pyinfra.connectors.ssh import SSHConnector  # noqa: E402
from pyinfra_cli.main import main  # noqa: E402

import portable_k3s.connection  # noqa: E402

CALLS: list[dict[str, Any]] = []


def _where(host: Any) -> tuple[str, str]:
    """(deploy, operation) the host is busy with: the operation pyinfra is evaluating or executing on it."""
    if host.current_op_hash:
        meta = host.state.op_meta.get(host.current_op_hash)
        name = sorted(meta.names)[0] if meta and meta.names else "?"
        deploy, _, op = name.rpartition(" | ")
        return deploy or "(no deploy)", op
    if host.current_deploy_name:
        return host.current_deploy_name, "(deploy body)"
    # No operation of its own: a fact read for another host's operation (e.g. the entrance reading a backend's
    # tailnet address), or pyinfra's own housekeeping.
    return "(for another host)", ""


def _counted(kind: str, method: Any) -> Any:
    def wrapper(self: SSHConnector, *args: Any, **kwargs: Any) -> Any:
        host = self.host
        deploy, op = _where(host)
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            CALLS.append({
                "host": host.name, "kind": kind, "deploy": deploy, "op": op,
                "stage": "execute" if host.state.is_executing else "prepare",
                "seconds": time.perf_counter() - started,
            })

    return wrapper


def summary(calls: list[dict[str, Any]]) -> dict[str, Any]:
    hosts: dict[str, Any] = {}
    for call in calls:
        h = hosts.setdefault(call["host"], {
            "calls": 0, "seconds": 0.0, "by_kind": defaultdict(int), "by_stage": defaultdict(int),
            "by_deploy": defaultdict(int), "by_op": defaultdict(int),
            "seconds_by_deploy": defaultdict(float), "seconds_by_op": defaultdict(float),
        })
        h["calls"] += 1
        h["seconds"] += call["seconds"]
        h["by_kind"][call["kind"]] += 1
        h["by_stage"][call["stage"]] += 1
        h["by_deploy"][call["deploy"]] += 1
        h["by_op"][f"{call['deploy']} | {call['op']}"] += 1
        h["seconds_by_deploy"][call["deploy"]] += call["seconds"]
        h["seconds_by_op"][f"{call['deploy']} | {call['op']}"] += call["seconds"]
    return hosts


def _dump() -> None:
    path = os.environ.get("PK3S_BENCH_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump({"hosts": summary(CALLS)}, f, indent=1, sort_keys=True)


SSHConnector.run_shell_command = _counted("command", SSHConnector.run_shell_command)  # type: ignore[method-assign]
SSHConnector.put_file = _counted("upload", SSHConnector.put_file)  # type: ignore[method-assign]
SSHConnector.get_file = _counted("download", SSHConnector.get_file)  # type: ignore[method-assign]
if os.environ.get("PK3S_BENCH_NAGLE") == "1":
    portable_k3s.connection.set_host_options = lambda host: False  # type: ignore[assignment]
atexit.register(_dump)

if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\.pyw|\.exe)?$", "", "pyinfra")
    profile_path = os.environ.get("PK3S_BENCH_PROFILE")
    if profile_path:
        import cProfile  # noqa: PLC0415

        # CPU time, not wall time: under gevent a wall-clock profile charges every wait for the network to
        # whichever frame switched greenlets (paramiko's connect, a lock), which says nothing about CPU.
        profiler = cProfile.Profile(time.process_time)
        atexit.register(lambda: profiler.dump_stats(profile_path))  # runs before _dump: registered later
        profiler.enable()
    sys.exit(main())
