"""Lab tier: a deploy killed in the middle (SIGKILL to pyinfra, as a lost laptop lid or a killed terminal does).
The same for headscale's config, and with SIGINT (Ctrl-C) for the entrance's nginx config, at the end.

The run changes tailscaled's settings on every host (tailscale_mtu) and is killed right before the restart that
takes them up: every settings file is whole (written to a staged file, then renamed), and each is marked as not
taken up yet. The next run restarts tailscaled where the mark is, and k3s after it (flannel's VXLAN device goes with
tailscale0), though nothing it writes changes; then the hosts run what their files say. Without the mark, the
next run would see nothing to do and leave tailscaled on its old settings for good.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

# The operation between writing the settings and the restart: it changes nothing on a running tailscaled, so a kill
# there lands after every host's settings are written and before any restart.
KILL_AT = "Starting operation: Tailscale node | Run tailscaled"
MARKER = "/var/lib/portable-k3s/pending/tailscaled.service.restart"
RESTART = "Tailscale node | Restart tailscaled after a change"
RESTART_K3S = "Tailscale node | Restart k3s after tailscaled restarted (flannel's VXLAN device is on tailscale0)"
HEADSCALE_MARKER = "/var/lib/portable-k3s/pending/headscale.service.restart"
NGINX_MARKER = "/var/lib/portable-k3s/pending/nginx.service.reload"


def _kill_at(command: list[str], env: dict[str, str], operation: str, sig: int = signal.SIGKILL) -> str:
    """Run ``command`` and send it ``sig`` as it starts ``operation`` (its progress line); what it printed after."""
    run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, after = False, ""
    try:
        assert run.stdout is not None
        for line in run.stdout:
            if line.rstrip().endswith(operation):
                os.kill(run.pid, sig)
                killed = True
                break
        if killed and sig != signal.SIGKILL:  # it ends by itself (pyinfra: "Exiting upon user request!")
            after = run.communicate(timeout=60)[0]
    finally:
        run.kill()
        run.wait(timeout=30)
    assert killed, f"the run never reached {operation!r}"
    return after


def _state(lab, name: str) -> dict[str, str]:
    out = lab.ssh(name, f"cat /sys/class/net/tailscale0/mtu; grep -c TS_DEBUG_MTU /etc/default/tailscaled; "
                        f"test -e {MARKER} && echo marked || echo clean; systemctl is-active tailscaled; "
                        "ls -a /etc/default | grep -c portable-k3s-new", check=False).stdout.split()
    return dict(zip(("mtu", "mtu_lines", "marker", "tailscaled", "staged"), out, strict=False))


def test_a_deploy_killed_before_tailscaled_restarted_is_finished_by_the_next_run(lab, lab_env, converged_entrance,
                                                                                pyinfra):
    names = [h.name for h in lab.hosts()]
    data = {name: {"tailscale_mtu": 1400} for name in names}
    env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps(data), "PYTHONUNBUFFERED": "1"}
    command = [str(Path(sys.executable).with_name("pyinfra")), "tests/lab/node_baseline_inventory.py", "deploy.py",
               "-y"]
    _kill_at(command, env, KILL_AT)
    # Killed: every file whole and marked, nothing left staged, tailscaled still on its old settings and running.
    for name in names:
        assert _state(lab, name) == {"mtu": "1280", "mtu_lines": "1", "marker": "marked", "tailscaled": "active",
                                     "staged": "0"}, name
    again = subprocess.run([*command, "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    changed = {op["name"]: sorted(op["success"]) for op in json.loads(again.stdout)["results"]["operations"]
               if op["success"]}
    assert changed.get(RESTART) == sorted(names), changed
    assert changed.get(RESTART_K3S) == sorted(n for n in names if n != "h1"), changed
    for name in names:
        assert _state(lab, name) == {"mtu": "1400", "mtu_lines": "1", "marker": "clean", "tailscaled": "active",
                                     "staged": "0"}, name
    # Back to the committed settings, and flannel's devices back on every k3s node before the next tests.
    restored = pyinfra()
    assert restored.returncode == 0, restored.stderr[-4000:]
    for name in names:
        assert _state(lab, name)["mtu"] == "1280", name
        if name != "h1":
            flannel = lab.ssh(name, "for i in $(seq 60); do [ -e /sys/class/net/flannel.1 ] && exit 0; sleep 1; "
                                    "done; exit 1", check=False)
            assert flannel.returncode == 0, f"no flannel.1 on {name} 60 s after the restore"


def _h1(lab) -> dict[str, str]:
    """headscale's and nginx's config and marks on h1, when headscale started, and nginx's workers."""
    out = lab.ssh("h1", f"grep -c 192.0.2.53 /etc/headscale/config.yaml; grep -c 'proxy_connect_timeout 4s' "
                        f"/etc/nginx/nginx.conf; test -e {HEADSCALE_MARKER} && echo marked || echo clean; "
                        f"test -e {NGINX_MARKER} && echo marked || echo clean; "
                        "systemctl show -p ActiveEnterTimestampMonotonic --value headscale; "
                        "pgrep -d, -P $(cat /run/nginx.pid) | tr ',' '+'", check=False).stdout.split()
    return dict(zip(("headscale_conf", "nginx_conf", "headscale_mark", "nginx_mark", "headscale_since", "workers"),
                    out, strict=False))


def test_runs_killed_before_headscale_restarted_and_before_nginx_reloaded_are_finished_by_the_next_run(
        lab, lab_env, converged_entrance, pyinfra):
    """The same for headscale and the entrance's nginx on h1, in runs limited to h1: headscale's config changed
    (tailnet_nameservers) and the run killed before headscale restarted; the next run interrupted (SIGINT, as
    Ctrl-C does) before nginx reloaded its changed config (entrance_connect_timeout), having restarted headscale; the
    one after reloads nginx."""
    data = {"h1": {"tailnet_nameservers": ["192.0.2.53"], "entrance_connect_timeout": "4s"}}
    env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps(data), "PYTHONUNBUFFERED": "1"}
    command = [str(Path(sys.executable).with_name("pyinfra")), "tests/lab/node_baseline_inventory.py", "deploy.py",
               "-y", "--limit", "h1"]
    before = _h1(lab)
    _kill_at(command, env, "Starting operation: headscale server | Run headscale")
    killed = _h1(lab)
    assert killed == {**before, "headscale_conf": "1", "headscale_mark": "marked"}, (before, killed)
    # Ctrl-C this time: pyinfra stops where it is (and exits 0).
    printed = _kill_at(command, env, "Starting operation: Entrance | Run nginx", signal.SIGINT)
    assert "Exiting upon user request!" in printed, printed[-2000:]
    second = _h1(lab)
    assert second["headscale_mark"] == "clean" and second["headscale_since"] != before["headscale_since"], second
    assert {k: second[k] for k in ("nginx_conf", "nginx_mark", "workers")} == {
        "nginx_conf": "2", "nginx_mark": "marked", "workers": before["workers"]}, (before, second)
    again = subprocess.run([*command, "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    changed = {op["name"] for op in json.loads(again.stdout)["results"]["operations"] if op["success"]}
    assert "Entrance | Reload nginx after a config change" in changed, changed
    assert not [name for name in changed if name.startswith("headscale server | Restart")], changed
    third = _h1(lab)
    assert third["nginx_mark"] == "clean" and third["headscale_since"] == second["headscale_since"], third
    assert not set(third["workers"].split("+")) & set(before["workers"].split("+")), (before, third)
    restored = pyinfra("--limit", "h1")
    assert restored.returncode == 0, restored.stderr[-4000:]
    back = _h1(lab)
    assert {k: back[k] for k in ("headscale_conf", "nginx_conf", "headscale_mark", "nginx_mark")} == {
        "headscale_conf": "0", "nginx_conf": "0", "headscale_mark": "clean", "nginx_mark": "clean"}, back
