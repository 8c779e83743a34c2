"""Lab tier: the public path under load and faults, with bench/load.py (small N and T here; full size through the
tool itself, see the README's reliability section).

Visitors are this machine, from its own address on the cloud bridge; hostile clients come from a second address
of this machine on the same bridge, so the entrance's per-address limit applies to them and not to the visitors.
Each test prints its figures.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.load import LoadPlan, run_load

from .conftest import REPO
from .public import BACKENDS, PRIVATE, PUBLIC, entrance, kubectl_json, second_address, served, tls

CONNECT_TIMEOUT = 3  # entrance_connect_timeout's default, in s
FAIL_TIMEOUT = 10  # entrance_fail_timeout's default


def _plan(lab, ca: Path, **settings: Any) -> LoadPlan:
    return LoadPlan(entrance(lab), PUBLIC, str(ca / "ca.pem"), **settings)


def _workers(lab) -> str:
    return lab.ssh("h1", "ps -o pid= --ppid $(cat /run/nginx.pid) | sort").stdout


def _during(load: LoadPlan, action, after: float) -> tuple[dict[str, Any], float, float]:
    """Run ``load``; ``after`` s into it, run ``action()`` (in this thread). The report, and when the action
    started and ended, in seconds into the load."""
    found: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: found.update(run_load(load)))
    began = time.monotonic()
    runner.start()
    time.sleep(after)
    start = time.monotonic() - began
    try:
        action()
    finally:
        end = time.monotonic() - began
        runner.join(timeout=load.seconds + 60)
    assert found, "the load did not finish"
    return found, start, end


def _figures(title: str, found: dict[str, Any]) -> None:
    print(f"\n{title}: {found['visits']} visits at {found['plan']['rate']}/s for {found['plan']['seconds']} s, "
          f"{found['failed']} failed {found['failed_at_s']}; handshake p50 {found['handshake_ms']['p50']:.1f} ms "
          f"p99 {found['handshake_ms']['p99']:.1f} ms; first byte p50 {found['first_byte_ms']['p50']:.1f} ms "
          f"p99 {found['first_byte_ms']['p99']:.1f} ms; errors {found['errors']}")


def test_visitors_are_served_while_hostile_clients_hammer_the_entrance(lab, served_apps):
    """From one address at once: 1000 connections that send nothing (each re-opened a second after the entrance
    closes it), 100 that send a ClientHello a byte a second, 64 KiB ClientHellos and junk openings; visitors from
    another address keep completing handshakes to the public name (at least 99 %, p99 under 1 s), no nginx worker
    dies or runs out of files, and private and unknown names stay closed."""
    workers = _workers(lab)
    assert workers.split(), "no nginx worker on the entrance"
    lab.ssh("h1", "truncate -s 0 /var/log/nginx/error.log")
    with second_address(lab) as scanner:
        load = _plan(lab, served_apps, rate=20, seconds=25, idle=1000, slow=100, oversized=5, malformed=10,
                     hostile_source=scanner)

        def closed_names() -> None:
            time.sleep(10)  # in the middle of it
            for sni in (PRIVATE, "nope.example.org"):
                with pytest.raises((OSError, ConnectionError)):
                    tls(lab, served_apps, sni)

        found, _, _ = _during(load, closed_names, 0)
    _figures("under hostile clients", found)
    hostile = found["hostile"]
    print("hostile: " + json.dumps(hostile))
    assert found["success"] >= 0.99 and found["handshake_ms"]["p99"] < 1000, found
    assert hostile["idle"]["opened"] >= 1000 and hostile["slow"]["opened"] >= 100
    # The entrance closed what it must: idle and slow ones after entrance_preread_timeout (or at once over the
    # per-address limit), every oversized ClientHello.
    assert hostile["idle"]["closed_by_peer"] > 0 and hostile["slow"]["closed_by_peer"] > 0
    assert hostile["oversized"]["closed_by_peer"] == hostile["oversized"]["opened"] > 0
    log = lab.ssh("h1", "cat /var/log/nginx/error.log").stdout
    assert "Too many open files" not in log and "worker process" not in log, log[-2000:]
    assert _workers(lab) == workers  # no worker died


def test_a_catalog_change_deployed_during_load_fails_no_visit(lab, served_apps, lab_env):
    """The catalog changes (a private app made public) and changes back, each deployed to the entrance with the
    real CLI while visitors keep coming: nginx reloads twice and no visit fails."""
    apps = runpy.run_path(str(REPO / "group_data" / "all.py"))["apps"]
    flipped = [{**a, "public": True} if a.get("hostname") == PRIVATE else a for a in apps]
    reloads = lambda: int(lab.ssh("h1", "journalctl -u nginx --no-pager -o cat | grep -c 'Reloaded'",  # noqa: E731
                                  check=False).stdout.strip() or 0)
    before = reloads()
    runs = []

    def deploy_twice() -> None:
        for catalog in (flipped, apps):
            env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps({h.name: {"apps": catalog}
                                                                         for h in lab.hosts()})}
            runs.append(subprocess.run(
                [str(Path(sys.executable).with_name("pyinfra")), "tests/lab/node_baseline_inventory.py",
                 "deploy.py", "-y", "--limit", "h1"], cwd=REPO, env=env, capture_output=True, text=True,
                timeout=300))
            time.sleep(2)

    found, start, end = _during(_plan(lab, served_apps, rate=20, seconds=30), deploy_twice, 3)
    _figures(f"catalog change deployed twice during load (from {start:.0f} s to {end:.0f} s)", found)
    assert all(run.returncode == 0 for run in runs), [run.stderr[-2000:] for run in runs]
    assert end < found["plan"]["seconds"], "the deploys outlasted the load"
    assert reloads() == before + 2
    assert found["failed"] == 0, found


def test_headscale_restarted_during_load_fails_no_visit(lab, served_apps):
    """headscale (the tailnet's control server) restarts while visitors come: the WireGuard sessions between the
    entrance and the nodes outlive it, and no visit fails."""
    found, start, _ = _during(_plan(lab, served_apps, rate=20, seconds=20),
                              lambda: lab.ssh("h1", "systemctl restart headscale"), 5)
    _figures(f"headscale restarted at {start:.1f} s", found)
    assert lab.ssh("h1", "systemctl is-active headscale").stdout.strip() == "active"
    assert found["failed"] == 0, found


def test_a_node_stopped_during_load_fails_visits_only_within_the_entrances_window(lab, served_apps):
    """A k3s agent that does not run the app's pod is shut down (power off, as the lab does it) while visitors
    come: visits fail only while it goes down and for entrance_connect_timeout after (then the entrance finds it
    gone and skips it for entrance_fail_timeout at a time), and a visit slowed by the dead node waits at most
    entrance_connect_timeout more. Booted again after, the node serves again."""
    pod_node = kubectl_json(lab, "get pods -n app-blog -l app.kubernetes.io/name=blog")["items"][0]["spec"]["nodeName"]
    victim = next(name for name in reversed(BACKENDS) if name not in (pod_node, "h2"))
    count = len(lab.hosts())
    try:
        found, start, end = _during(_plan(lab, served_apps, rate=20, seconds=30),
                                    lambda: lab.shut_down(victim), 5)
    finally:
        lab.up(count, timeout=120)
    _figures(f"{victim} shut down from {start:.1f} s to {end:.1f} s", found)
    window = (start, end + CONNECT_TIMEOUT + 2)
    outside = [t for t in found["failed_at_s"] if not window[0] <= t <= window[1]]
    assert not outside, (window, found)
    assert found["handshake_ms"]["p99"] < (CONNECT_TIMEOUT + 1) * 1000, found
    print(f"failed in the window {window[0]:.1f}-{window[1]:.1f} s: {found['failed']}")
    # Back: the node is Ready and the public app is served.
    deadline = time.monotonic() + 180
    while True:
        ready = lab.ssh("h2", f"k3s kubectl get node {victim} -o jsonpath="
                              "'{.status.conditions[?(@.type==\"Ready\")].status}'", check=False).stdout
        _, body = tls(lab, served_apps, PUBLIC)
        if served(body) and ready.strip() == "True":
            break
        assert time.monotonic() < deadline, (ready, body[:200])
        time.sleep(3)
