"""Lab tier: faults during a deploy. A host loses its power mid-run (``Lab.power_cut``: its link goes down, then it
is shut down, so its peers see only silence), with the run held still at a chosen operation while it happens.

- A home node lost as the node baseline starts, in a run that changes every host's NTP servers: pyinfra gives
  it up once its SSH connection stays silent for ``connection_lost_after`` (15 s here; without the library's TCP
  options a command to it still waited after 180 s) and finishes every other host. The next run, with the node
  still down, changes nothing on the others; once the node is back, one run finishes it.
- The first k3s server's k3s stopped while an agent's deploy restarts it: bounded by ``k3s_ready_timeout``.
- The headscale host lost while a node joins.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from portable_k3s.lab.s3 import start_s3

from .conftest import REPO
from .public import BACKENDS, kubectl_json

NTP = "192.0.2.123"
TIMESYNCD = "/etc/systemd/timesyncd.conf.d/portable-k3s.conf"
# The full deploy, with the lab's hosts' data from PORTABLE_K3S_TEST_HOST_DATA.
COMMAND = [str(Path(sys.executable).with_name("pyinfra")), "tests/lab/node_baseline_inventory.py", "deploy.py", "-y"]
LOSE_AT = "Starting operation: Tailscale node | "
# The node baseline is the first deploy of a full run: a node lost there has all of the run's changes still to do.
LOSE_NODE_AT = "Starting operation: Node baseline | "


def _lose(lab, run: subprocess.Popen, name: str) -> None:
    """Cut ``name``'s power while the run stands still (stopped, then continued): it is lost right there."""
    os.kill(run.pid, signal.SIGSTOP)
    try:
        lab.power_cut(name)
    finally:
        os.kill(run.pid, signal.SIGCONT)


def _run_losing(lab, env: dict[str, str], at: str, name: str) -> tuple[int, str, float]:
    """Run the full deploy and lose ``name`` as the run reaches the line ``at``: its exit status, its output, and the
    seconds from the loss to its end."""
    run = subprocess.Popen(COMMAND, cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    printed: list[str] = []
    try:
        assert run.stdout is not None
        for line in run.stdout:
            printed.append(line)
            if at in line:
                _lose(lab, run, name)
                lost_at = time.monotonic()
                break
        else:
            raise AssertionError(f"the run never reached {at!r}:\n" + "".join(printed[-40:]))
        printed.append(run.communicate(timeout=600)[0])
        return run.returncode, "".join(printed), time.monotonic() - lost_at
    finally:
        run.kill()
        run.wait(timeout=30)


def _wait_ready(lab, name: str, after: str) -> None:
    """Wait until k3s reports ``name`` Ready and its Traefik pod (its share of the ingress) Running, at most 180 s;
    on failure, say what its node, its pods and its agent report."""
    deadline = time.monotonic() + 180
    ready = "{.status.conditions[?(@.type==\"Ready\")].status}"
    traefik = f"-n kube-system get pods -l app.kubernetes.io/name=traefik --field-selector spec.nodeName={name}"
    while True:
        node = lab.ssh("h2", f"k3s kubectl get node {name} -o jsonpath='{ready}'", check=False).stdout.strip()
        pods = lab.ssh("h2", f"k3s kubectl {traefik} -o jsonpath='{{.items[*].status.phase}}'", check=False).stdout
        if node == "True" and pods.split() == ["Running"]:
            return
        if time.monotonic() > deadline:
            why = lab.ssh("h2", f"k3s kubectl get node {name} -o jsonpath='{{.status.conditions}}'; "
                                f"k3s kubectl {traefik} -o wide", check=False)
            log = lab.ssh(name, "systemctl is-active k3s-agent tailscaled; journalctl -u k3s-agent -n 15 --no-pager",
                          check=False)
            raise AssertionError(f"{name} is not Ready with Traefik Running 180 s {after}: {why.stdout}\n"
                                 f"{log.stdout[-3000:]}")
        time.sleep(3)


def _ntp(lab, name: str) -> bool:
    return lab.ssh(name, f"grep -q {NTP} {TIMESYNCD}", check=False).returncode == 0


def test_a_node_lost_mid_run_fails_alone_and_the_next_run_after_it_is_back_finishes_it(lab, lab_env, pyinfra,
                                                                                       served_apps):
    pod_node = kubectl_json(lab, "get pods -n app-blog -l app.kubernetes.io/name=blog")["items"][0]["spec"]["nodeName"]
    lost = next(name for name in reversed(BACKENDS) if name not in (pod_node, "h2"))
    names = [h.name for h in lab.hosts()]
    others = [name for name in names if name != lost]
    data = {name: {"ntp_servers": [NTP], **({"connection_lost_after": 15} if name == lost else {})} for name in names}
    env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps(data)}
    try:
        status, output, took = _run_losing(lab, env, LOSE_NODE_AT, lost)
        # Failed, that host alone, within a minute of losing it; every other host finished.
        assert status != 0, output[-4000:]
        assert f"[{lost}] Error: " in output, output[-4000:]
        assert took < 120, f"the run took {took:.0f} s after {lost} was lost"
        print(f"\nthe run ended {took:.1f} s after {lost} was lost")
        assert all(_ntp(lab, name) for name in others)
        # With the node still down: nothing left to do on the others.
        again = subprocess.run([*COMMAND, "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        changed = {op["name"]: op["success"] for op in json.loads(again.stdout)["results"]["operations"]
                   if set(op["success"]) & set(others)}
        assert changed == {}, changed
    finally:
        lab.up(len(names), timeout=120)
    # Back: one run finishes it, without anything done by hand, and changes nothing on the others.
    back = subprocess.run([*COMMAND, "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert back.returncode == 0, back.stderr[-4000:]
    changed = {op["name"]: sorted(op["success"]) for op in json.loads(back.stdout)["results"]["operations"]
               if op["success"]}
    assert changed and all(hosts == [lost] for hosts in changed.values()), changed
    assert _ntp(lab, lost)
    # The committed settings again, and the node Ready before the next tests.
    restored = pyinfra()
    assert restored.returncode == 0, restored.stderr[-4000:]
    _wait_ready(lab, lost, "after it was booted")


def test_agents_deployed_while_the_first_server_is_down_fail_within_their_timeout_with_its_log(lab, lab_env, pyinfra,
                                                                                                converged_entrance):
    """k3s is stopped on the first server (h2) while an agent's deploy changes its config: the agent's restart
    waits ``k3s_ready_timeout`` (20 s here) at most, then fails with the unit's last log lines; its change stays
    marked, so once the server is back the next run restarts the agent and converges."""
    agent = "h4"
    marker = "/var/lib/portable-k3s/pending/k3s-agent.service.restart"
    data = {agent: {"k3s_node_labels": ["portable-k3s.test/server-down=yes"], "k3s_ready_timeout": 20}}
    env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps(data)}
    command = [*COMMAND, "--limit", agent]
    lab.ssh("h2", "systemctl stop k3s")
    try:
        started = time.monotonic()
        down = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        took = time.monotonic() - started
        output = down.stdout + down.stderr
        assert down.returncode != 0, output[-4000:]
        assert "k3s-agent.service is not active 20 s after systemctl restart; its last log lines:" in output, \
            output[-4000:]
        assert took < 90, f"the run took {took:.0f} s"
        print(f"\nthe agent's run failed after {took:.1f} s")
        assert lab.ssh(agent, f"test -e {marker}", check=False).returncode == 0
    finally:
        lab.ssh("h2", "systemctl start k3s && timeout 180 sh -c 'until k3s kubectl get --raw /readyz >/dev/null 2>&1; "
                      "do sleep 2; done'")
    # The same change, with the default wait for the agent (the server is back, and busy coming up).
    data[agent]["k3s_ready_timeout"] = 300
    env["PORTABLE_K3S_TEST_HOST_DATA"] = json.dumps(data)
    again = subprocess.run([*command, "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    changed = {op["name"]: op["success"] for op in json.loads(again.stdout)["results"]["operations"] if op["success"]}
    assert changed.get("k3s | Agent: restart after a config, token or unit change") == [agent], changed
    assert lab.ssh(agent, f"test -e {marker}", check=False).returncode == 1
    restored = pyinfra("--limit", agent)
    assert restored.returncode == 0, restored.stderr[-4000:]
    _wait_ready(lab, agent, "after the server came back")


def test_nodes_joining_while_the_headscale_host_is_lost_fail_saying_why_and_one_run_joins_them_after(
        lab, lab_env, pyinfra, converged_entrance):
    """h4 is deleted from headscale (so the run joins it again) and h1, the headscale host and entrance, is lost as
    the tailscale deploy starts: h4's join fails naming headscale's host, leaves no key file behind and its
    tailscaled untouched; once h1 is back, one run joins h4 and changes nothing else."""
    before = lab.ssh("h4", "tailscale status --json | jq -r .BackendState").stdout.strip()
    listed = json.loads(lab.ssh("h1", "headscale nodes list -o json").stdout or "null") or []
    lab.ssh("h1", f"headscale nodes delete --identifier {next(n['id'] for n in listed if n['given_name'] == 'h4')} "
                  "--force")
    env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps({"h1": {"connection_lost_after": 15}})}
    count = len(lab.hosts())
    try:
        status, output, _ = _run_losing(lab, env, LOSE_AT, "h1")
        assert status != 0, output[-4000:]
        print("\n" + "".join(line for line in output.splitlines(keepends=True) if "[h4]" in line and "rror" in line))
        assert "minting a pre-auth key on h1 failed" in output, output[-4000:]
        # No key file left on h4, and its tailscaled untouched (the next run joins it).
        assert lab.ssh("h4", "test -e /run/portable-k3s/tailscale-authkey", check=False).returncode == 1
        assert lab.ssh("h4", "tailscale status --json | jq -r .BackendState").stdout.strip() == before
    finally:
        lab.up(count, timeout=120)
        start_s3(lab)
    back = pyinfra()
    assert back.returncode == 0, back.stderr[-4000:]
    changed = back.changed()
    assert changed.pop("Tailscale node | Join the tailnet") == ["h4"], back.changed()
    assert {hosts == ["h4"] or name.startswith("Entrance | ") for name, hosts in changed.items()} <= {True}, changed
    assert pyinfra().changed() == {}
    _wait_ready(lab, "h4", "after it joined again")
