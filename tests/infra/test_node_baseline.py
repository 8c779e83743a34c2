"""Checks for the node baseline (portable_k3s.deploys.node_baseline) on k3s nodes and exit nodes: the firmware
policy holds where it says "fail", a laptop runs as a server, the watchdog is fed, a panic reboots the host.

In a container (the lab) the watchdog device, the console and /proc/sys belong to the container host: there
the checks assert that this is why nothing is armed or applied."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from portable_k3s.deploys.node_baseline import DEFAULTS, NODE_GROUPS, firmware_policy_levels
from portable_k3s.facts import hardware as hw
from portable_k3s.operations import hardware
from portable_k3s.render import render

NODES = tuple(sorted(NODE_GROUPS))


@pytest.fixture
def node_data(inventory_host) -> dict[str, Any]:
    """The node baseline's data for this host, with its defaults filled in."""
    return {key: inventory_host.get(key, default) for key, default in DEFAULTS.items()}


@pytest.fixture
def laptop(inventory_host, node_data) -> None:
    if not node_data["laptop"]:
        pytest.skip(f"{inventory_host.name} is not a laptop")


def _fact(host, fact: Any, *args: str) -> Any:
    command = fact.command(*args)
    text = command if isinstance(command, str) else command.get_raw_value()
    return fact.process(host.check_output(f"sh -c {shlex.quote(text)}").splitlines())


def _container(host) -> str | None:
    found = host.run("systemd-detect-virt --container").stdout.strip()
    return None if found in ("", "none") else found


@pytest.mark.groups(*NODES)
def test_firmware_policy_holds(host, node_data):
    """A node deployed under a "fail" check complies with it (a "warn" one is reported by the deploy)."""
    info = _fact(host, hw.Firmware())
    assert info["arch"], "the firmware fact did not run"
    policy = firmware_policy_levels(node_data["firmware_policy"])
    failing = [f.message() for f in hardware.firmware_findings(info, **policy) if f.level == "fail" and not f.complies]
    assert failing == []


@pytest.mark.groups(*NODES)
def test_watchdog_is_fed(host, node_data):
    seconds = node_data["watchdog_sec"]
    dropin = host.file(hardware.WATCHDOG_DROPIN)
    assert dropin.exists and dropin.content_string == render("node_baseline/watchdog.conf.j2", runtime_sec=seconds)
    shown = host.check_output("systemctl show -p RuntimeWatchdogUSec --value")
    assert hw.timespan_seconds(shown) == seconds, shown
    devices = host.run("ls /sys/class/watchdog 2>/dev/null").stdout.split()
    vm = host.run("systemd-detect-virt --vm").stdout.strip()
    if _container(host):
        assert not host.file("/dev/watchdog").exists and not host.file("/dev/watchdog0").exists
    elif seconds and vm in ("", "none"):  # real hardware: a watchdog device must be armed
        assert devices, "no watchdog device: load its driver (e.g. iTCO_wdt, sp5100_tco, bcm2835_wdt)"
        states = [host.file(f"/sys/class/watchdog/{d}/state").content_string.strip() for d in devices]
        assert "active" in states, states


@pytest.mark.groups(*NODES)
def test_panic_reboots(host, node_data):
    reboot_sec, on_oops = node_data["kernel_panic_reboot_sec"], node_data["kernel_panic_on_oops"]
    sysctl = host.file(hardware.PANIC_SYSCTL)
    assert sysctl.exists
    assert sysctl.content_string == render("node_baseline/panic-sysctl.conf.j2", reboot_sec=reboot_sec, on_oops=on_oops)
    info = _fact(host, hw.PanicSysctl())
    if info["writable"]:
        assert (info["panic"], info["panic_on_oops"]) == (reboot_sec, int(on_oops))
    else:
        # kernel.panic is not namespaced: a container cannot set it, and the file waits for a real boot.
        assert info["container"], "/proc/sys is read-only on a host that is not a container"
        assert host.run("echo 0 > /proc/sys/kernel/panic").rc != 0


@pytest.mark.groups(*NODES)
@pytest.mark.usefixtures("laptop")
def test_laptop_ignores_the_lid(host):
    dropin = host.file(hardware.LOGIND_DROPIN)
    assert dropin.exists
    assert dropin.content_string == render("node_baseline/logind-laptop.conf.j2", settings=hardware.LID_SETTINGS)
    info = _fact(host, hw.LidSwitch(), hardware.LOGIND_DROPIN)
    assert info["logind_active"]
    assert info["in_effect"] == hardware.LID_SETTINGS


@pytest.mark.groups(*NODES)
@pytest.mark.usefixtures("laptop")
def test_laptop_never_sleeps(host):
    states = _fact(host, hw.SleepTargets())
    assert states and all(state in ("masked", "not-found") for state in states.values()), states
    assert states.get("suspend.target") == "masked"


@pytest.mark.groups(*NODES)
@pytest.mark.usefixtures("laptop")
def test_laptop_battery_thresholds(host, node_data):
    thresholds = node_data["battery_charge_thresholds"]
    info = _fact(host, hw.Battery())
    capable = [b for b in info["batteries"] if b["thresholds"]]
    if not thresholds:
        pytest.skip("battery_charge_thresholds is None: the thresholds are left alone")
    if not capable:
        assert not host.file(hardware.BATTERY_UNIT).exists, "a thresholds unit on a host without thresholds"
        return
    for battery in capable:
        assert (battery["start_threshold"], battery["stop_threshold"]) == (thresholds["start"], thresholds["stop"])
    assert host.service("portable-k3s-battery-thresholds").is_enabled


@pytest.mark.groups(*NODES)
@pytest.mark.usefixtures("laptop")
def test_laptop_console_blanks(host, node_data):
    minutes = node_data["console_blank_minutes"]
    unit = host.file(hardware.CONSOLE_UNIT)
    assert unit.exists and unit.content_string == render("node_baseline/console-blank.service.j2", minutes=minutes)
    assert host.service("portable-k3s-console-blank").is_enabled
    console = _fact(host, hw.Console())
    if console["vt"]:
        assert console["blank_sec"] == minutes * 60
    else:
        assert _container(host), "no /dev/tty1 on a host that is not a container"
