"""Lab tier: the node baseline on the lab's nodes (h2 the k3s server, h3 and h4 agents) with the real CLI and
the reference deploy. The lab hosts are systemd-nspawn containers in a VM: no DMI, battery, lid or console,
no watchdog device, and a read-only /proc/sys, so the firmware facts are unknown and the panic sysctl cannot be
applied; the deploy must say so, not fail or pretend.

h2 and h3 are marked as laptops with both firmware checks at "warn"; h4 keeps the defaults. The deploy runs
twice (the second run changes nothing), the testinfra suite checks the result, then h3's policy says "fail":
h3 alone is stopped, with a message naming the policy key and what was found, while the others converge.

Tests in this module run in order and share one lab.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from portable_k3s.operations import hardware

from .conftest import REPO, PyinfraRun

INVENTORY = "tests/lab/node_baseline_inventory.py"
NODES = ("h2", "h3", "h4")
WARN = {"require_coreboot": "warn", "require_me_disabled": "warn"}
LAPTOPS: dict[str, dict[str, Any]] = {
    "h2": {"laptop": True, "firmware_policy": WARN},
    "h3": {"laptop": True, "firmware_policy": WARN},
}
LAPTOP_OPS = (
    "Node baseline | Ignore the lid switch",
    "Node baseline | Disable sleep and hibernation",
    "Node baseline | Blank the idle console",
)
SLEEP = " ".join(("sleep.target", "suspend.target", "hibernate.target", "hybrid-sleep.target"))
BUSCTL = ("busctl get-property org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager "
          "HandleLidSwitch HandleLidSwitchExternalPower HandleLidSwitchDocked")


def deploy(lab_env: dict[str, str], host_data: dict[str, Any], *args: str) -> PyinfraRun:
    """The real CLI: the reference deploy on the lab, with extra data per host."""
    env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps(host_data)}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), INVENTORY, "deploy.py", "-y", "--json", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    return PyinfraRun(proc.returncode, proc.stdout, proc.stderr)


def logind_pid(lab: Any, name: str) -> str:
    return lab.ssh(name, "systemctl show -p MainPID --value systemd-logind").stdout.strip()  # type: ignore[no-any-return]


def test_laptops_converge_then_nothing_changes(lab, lab_env):
    # The deploy's own SSH sessions become logind sessions (pam_systemd), as on a real Debian host: the logind
    # restart below must not cut them.
    lab.ssh("h2", "dpkg -s libpam-systemd >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                  "apt-get install -y -q --no-install-recommends libpam-systemd; } >/dev/null 2>&1", timeout=300)
    since = lab.ssh("h2", "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    before = {name: logind_pid(lab, name) for name in NODES}

    first = deploy(lab_env, LAPTOPS)
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.results["totals"]["error"] == 0 and first.results["failed_hosts"] == []
    changed = first.changed()
    for op in LAPTOP_OPS:
        assert changed.get(op) == ["h2", "h3"], (op, changed.get(op))
    # Warnings, not errors: nothing can tell the firmware or the ME of a container in a VM.
    for name in ("h2", "h3"):
        assert (f'[{name}] firmware_policy.require_coreboot is "warn": the firmware is unknown: no DMI tables'
                in first.stderr), first.stderr[-3000:]
        me = f"[{name}] firmware_policy.require_me_disabled is \"warn\": the Intel ME's state is unknown"
        assert me in first.stderr
    assert "[h4] firmware_policy" not in first.stderr

    # logind was restarted on the laptops only, inside the deploy's own logind session, and the deploy went on.
    after = {name: logind_pid(lab, name) for name in NODES}
    assert after["h2"] != before["h2"] and after["h3"] != before["h3"] and after["h4"] == before["h4"]
    journal = lab.ssh("h2", f"journalctl -u systemd-logind --since '{since}' --no-pager -o cat").stdout
    assert "New session" in journal, journal

    second = deploy(lab_env, LAPTOPS, "-v")
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.changed() == {}, f"second run changed: {second.changed()}"
    assert second.results["totals"]["no_change"] == second.results["totals"]["hosts"]
    assert {name: logind_pid(lab, name) for name in NODES} == after, "logind restarted without a change"
    # The reasons the noops give in a container.
    for reason in (
        "kernel.panic is not namespaced and /proc/sys cannot be written here",
        "this host is a container (systemd-nspawn) without a watchdog device",
        "no charge thresholds to set: this host has no battery",
        "this host has no virtual console (/dev/tty1), so there is nothing to blank",
    ):
        assert reason in second.stderr, reason


def test_laptop_settings_are_in_effect(lab):
    for name in NODES:
        laptop = name in LAPTOPS
        lid = lab.ssh(name, BUSCTL).stdout.split()
        masked = lab.ssh(name, f"systemctl is-enabled {SLEEP}", check=False).stdout.split()
        if laptop:
            assert lid == ['s', '"ignore"'] * 3, (name, lid)
            assert masked == ["masked"] * 4, (name, masked)
        else:
            assert lid[1] == '"suspend"', (name, lid)
            assert "masked" not in masked, (name, masked)
        # Every node: the watchdog drop-in is loaded, the panic sysctl file is written (not applied: read-only).
        assert lab.ssh(name, "systemctl show -p RuntimeWatchdogUSec --value").stdout.strip() == "15s"
        sysctl = lab.ssh(name, f"cat {hardware.PANIC_SYSCTL}").stdout
        assert "kernel.panic = 10\n" in sysctl and "kernel.panic_on_oops = 1\n" in sysctl
        assert lab.ssh(name, "echo 10 > /proc/sys/kernel/panic", check=False).returncode != 0


def test_infra_suite_checks_the_laptops(lab_env):
    env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps(LAPTOPS), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/infra/test_node_baseline.py",
         "--inventory", INVENTORY],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " failed" not in summary and " passed" in summary, summary
    # Only h4's laptop checks are skipped (it is not a laptop); h2's and h3's ran.
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 4 and all(line.endswith(": h4 is not a laptop") for line in skipped), skipped
    print(summary)


def test_fail_policy_stops_exactly_that_host(lab, lab_env):
    # Undo one laptop setting on both laptops: the deploy must put it back on h2, and touch nothing on h3.
    for name in ("h2", "h3"):
        lab.ssh(name, f"rm -f {hardware.LOGIND_DROPIN}")
    data = {**LAPTOPS, "h3": {**LAPTOPS["h3"], "firmware_policy": {"require_coreboot": "fail"}}}

    run = deploy(lab_env, data)

    assert run.returncode != 0
    results = run.results
    assert results["failed_hosts"] == ["h3"], results["failed_hosts"]
    ops = {op["name"]: op for op in results["operations"]}
    assert ops["Node baseline | Check the firmware policy"]["error"] == ["h3"]
    for op in results["operations"]:
        assert op["error"] in ([], ["h3"]), op  # the others converge without an error
        if op["name"] in ("Read the host's state in one command",
                          "Node baseline | Read the firmware, watchdog and panic settings in one command"):
            continue  # the reads before the check (the check uses their answer)
        assert "h3" not in op["success"] + op["no_change"], op  # nothing ran on h3 after the check
    assert ops["Node baseline | Ignore the lid switch"]["success"] == ["h2"]
    message = ('[h3] firmware_policy.require_coreboot is "fail" and the firmware is unknown: no DMI tables '
               "(/sys/class/dmi/id) and no coreboot device (ACPI BOOT0000); this host is virtualised "
               "(systemd-nspawn on kvm), so coreboot cannot be confirmed: nothing else is deployed to this host "
               '(fix the firmware, or set firmware_policy.require_coreboot to "warn" or "off" for it)')
    assert message in run.stderr, run.stderr[-4000:]
    assert lab.ssh("h2", f"test -f {hardware.LOGIND_DROPIN}", check=False).returncode == 0
    assert lab.ssh("h3", f"test -f {hardware.LOGIND_DROPIN}", check=False).returncode != 0

    # Back to "warn": h3 converges again, and then nothing changes anywhere.
    again = deploy(lab_env, LAPTOPS)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed() == {"Node baseline | Ignore the lid switch": ["h3"]}
