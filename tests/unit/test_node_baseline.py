"""The node baseline (deploys/node_baseline.py, operations/hardware.py, facts/hardware.py): firmware policy
outcomes for reference machines, the fact commands against fake sysfs trees, the templates, the data keys in
the configuration model, and the deploy's wiring on ``@fake`` hosts, including a host stopped by its policy.

The reference machines' fact outputs (tests/unit/facts/hardware.*/) are reconstructed from those models' real
DMI strings and documented ME states, not dumped from the machines themselves: no such hardware is reachable
from the test machine. Each case file says what it is based on."""

from __future__ import annotations

import ast
import configparser
import importlib
import inspect
import logging
import os
import re
import shlex
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from pyinfra import host as current_host
from pyinfra.api import Config, Inventory, OperationValueError, State, StringCommand
from pyinfra.api.connect import connect_all
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state
from pyinfra.operations import server
from pyinfra_testing.util import FakeState, create_host

from portable_k3s.deploys import node_baseline as node_baseline_mod
from portable_k3s.deploys.node_baseline import DEFAULTS, NODE_GROUPS, is_node, node_baseline
from portable_k3s.facts import hardware as hw
from portable_k3s.facts.util import CONTAINER_IDS, container_of
from portable_k3s.operations import hardware
from portable_k3s.operations.util import PREFETCH_MARK
from portable_k3s.render import TEMPLATE_DIR, render, sha256
from tests.fake_connector import FakeConnector

HERE = Path(__file__).parent
FACT_CASES = HERE / "facts"
REPO = HERE.parents[1]


def fact_case(fact: str, case: str) -> dict[str, Any]:
    return yaml.safe_load((FACT_CASES / f"hardware.{fact}" / f"{case}.yaml").read_text())  # type: ignore[no-any-return]


def captured(fact_cls: type, case: str) -> Any:
    """The fact parsed from a reference machine's output (the unit case's output, not its expected answer)."""
    return fact_cls().process(fact_case(fact_cls.__name__, case)["output"])


def output_text(fact: str, case: str) -> str:
    return "\n".join(fact_case(fact, case)["output"])


# Firmware policy outcomes for the reference machines
#

# Machine (Firmware case) -> per check: (complies, a piece of what was found that the message must name).
MACHINES: dict[str, dict[str, tuple[bool, str]]] = {
    "t420_coreboot": {"require_coreboot": (True, "runs coreboot 4.9-2176-g2195f7af23, BIOS version prefix CBET4000"),
                      "require_me_disabled": (True, "working state recovery")},
    "t420_coreboot_me_hidden": {"require_coreboot": (True, "LENOVO ThinkPad T420 (4180A21) runs coreboot"),
                                "require_me_disabled": (True, "the Intel ME is absent")},
    "t410_stock_bios": {"require_coreboot": (False, "LENOVO firmware 6IET85WW (1.45 ) of 02/14/2013, not coreboot"),
                        "require_me_disabled": (False, "the Intel ME is running")},
    "fanless_ami_bios": {"require_coreboot": (False, "American Megatrends International, LLC. firmware"),
                         "require_me_disabled": (False, "the Intel ME is running")},
    "container_in_vm_no_dmi": {"require_coreboot": (False, "no DMI tables"),
                               "require_me_disabled": (False, "no MEI device in this virtual machine (kvm)")},
    "qemu_vm_seabios": {"require_coreboot": (False, "runs SeaBIOS firmware"),
                        "require_me_disabled": (False, "the Intel ME's state is unknown")},
    "raspberry_pi": {"require_coreboot": (False, "the firmware is unknown"),
                     "require_me_disabled": (True, "not an Intel x86 machine (aarch64)")},
}


def run_op(op: Any, facts: dict[str, Any], **kwargs: Any) -> tuple[list[Any], str | None]:
    state = FakeState()
    fake = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(fake):
        commands = list(op._inner(**kwargs))
    return commands, fake.noop_description


def text_of(command: Any) -> str:
    return command.get_raw_value() if isinstance(command, StringCommand) else str(command)


@pytest.mark.parametrize("machine", sorted(MACHINES))
@pytest.mark.parametrize("check", hardware.FIRMWARE_CHECKS)
@pytest.mark.parametrize("level", hardware.POLICY_LEVELS)
def test_firmware_policy_outcome(machine: str, check: str, level: str, caplog: pytest.LogCaptureFixture) -> None:
    complies, found = MACHINES[machine][check]
    info = captured(hw.Firmware, machine)
    caplog.set_level(logging.WARNING, logger="pyinfra")
    commands, noop = run_op(hardware.firmware_policy, {"hardware.Firmware": info}, **{check: level})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

    if level == "fail" and not complies:
        (command,) = commands
        text = text_of(command)
        assert text.endswith(" >&2; exit 1") and text.startswith("echo ")
        message = shlex.split(text.removesuffix(" >&2; exit 1"))[1]
        assert message.startswith(f'firmware_policy.{check} is "fail" and ')
        assert "nothing else is deployed to this host" in message and found in message, message
        assert errors == [message]
        assert noop is None
        return
    assert commands == []
    assert errors == []
    if level == "off":  # and the other check too (its default): nothing to check, nothing read
        assert noop == "every firmware check is off: the firmware is not read"
        assert warnings == []
        return
    assert noop is not None and f"firmware_policy.{check}" in noop and found in noop
    if level == "warn" and not complies:
        assert len(warnings) == 1 and warnings[0].startswith(f'firmware_policy.{check} is "warn": '), warnings
        assert found in warnings[0]
        assert "does not comply" in noop
    else:
        assert warnings == []


def test_firmware_policy_messages_name_what_was_found() -> None:
    t410 = captured(hw.Firmware, "t410_stock_bios")
    findings = {f.check: f for f in hardware.firmware_findings(t410, "fail", "fail")}
    assert findings["require_coreboot"].found == (
        "LENOVO ThinkPad T410 (2522WX8) runs LENOVO firmware 6IET85WW (1.45 ) of 02/14/2013, not coreboot"
    )
    assert findings["require_me_disabled"].found.startswith("the Intel ME is running: ")
    assert "working state normal" in findings["require_me_disabled"].found
    fanless = captured(hw.Firmware, "fanless_ami_bios")
    (coreboot, _) = hardware.firmware_findings(fanless, "warn", "off")
    assert coreboot.found.startswith("an unbranded machine runs American Megatrends International, LLC. firmware ")
    lab = captured(hw.Firmware, "container_in_vm_no_dmi")
    coreboot, me = hardware.firmware_findings(lab, "fail", "fail")
    assert "no DMI tables" in coreboot.found and "systemd-nspawn on kvm" in coreboot.found
    assert me.found == (
        "the Intel ME's state is unknown: no MEI device in this virtual machine (kvm): "
        "the real machine's ME is not visible"
    )


def test_both_failing_checks_are_in_one_message() -> None:
    info = captured(hw.Firmware, "t410_stock_bios")
    (command,), _ = run_op(
        hardware.firmware_policy, {"hardware.Firmware": info}, require_coreboot="fail", require_me_disabled="fail"
    )
    message = shlex.split(text_of(command))[1]
    assert message.count('is "fail" and') == 2
    assert message.index("require_coreboot") < message.index("require_me_disabled")


def test_warnings_are_logged_once_per_run_and_a_failure_by_its_command(caplog: pytest.LogCaptureFixture) -> None:
    """A normal run evaluates the check once, to execute it: the warning is logged then. A --diff run evaluates
    it twice (planning, then executing): still one warning. The failure's message is the failing command's
    stderr (pyinfra prints it); only when planning (--dry, nothing executes) is it logged."""
    info = captured(hw.Firmware, "t410_stock_bios")
    caplog.set_level(logging.WARNING, logger="pyinfra")
    state = FakeState()
    fake = create_host(state, facts={"hardware.Firmware": info})
    with ctx_state.use(state), ctx_host.use(fake):
        state.is_executing = False
        assert list(hardware.firmware_policy._inner(require_coreboot="warn")) == []
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "not coreboot" in caplog.records[0].getMessage()
        state.is_executing = True
        assert list(hardware.firmware_policy._inner(require_coreboot="warn")) == []
        assert len(caplog.records) == 1
        (command,) = list(hardware.firmware_policy._inner(require_coreboot="fail"))
        assert len(caplog.records) == 1
        assert text_of(command).endswith("exit 1")
        state.is_executing = False
        list(hardware.firmware_policy._inner(require_coreboot="fail"))
    assert [r.levelname for r in caplog.records] == ["WARNING", "ERROR"]
    assert 'require_coreboot is "fail"' in caplog.records[1].getMessage()


def test_hfsts1_decoding() -> None:
    assert hw.decode_hfsts1(0x00003182) == {
        "working_state": "recovery", "operation_mode": "normal", "error_code": "image-failure",
        "manufacturing_mode": False,
    }
    assert hw.decode_hfsts1(0x90000255)["manufacturing_mode"] is True
    assert hw.decode_hfsts1(0x00030245)["operation_mode"] == "soft-temporary-disable"
    assert hw.decode_hfsts1(0x0000000F)["working_state"] == "unknown-15"


def test_me_soft_disabled_complies() -> None:
    """coreboot's ME option "disabled" on a board that keeps the MEI function visible: operation mode 3."""
    lines = fact_case("Firmware", "t410_stock_bios")["output"]
    lines = [line.replace("1e000245", "1e030245").replace("1E000245", "1E030245") for line in lines]
    info = hw.Firmware().process(lines)
    assert info["me"]["status"] == "disabled" and info["me"]["operation_mode"] == "soft-temporary-disable"
    (_, me) = hardware.firmware_findings(info, "off", "fail")
    assert me.complies


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("15s", 15), ("1min", 60), ("1min 30s", 90), ("2h", 7200), ("500ms", 0), ("infinity", None),
     ("", None), ("15 s", None), ("15sx", None)],
)
def test_timespan_seconds(text: str, seconds: int | None) -> None:
    assert hw.timespan_seconds(text) == seconds


@pytest.mark.skipif(shutil.which("systemd-detect-virt") is None, reason="needs systemd's systemd-detect-virt")
def test_container_ids_are_systemds() -> None:
    """The container ids the facts know are the ones this machine's systemd lists after its VMs."""
    listed = subprocess.run(["systemd-detect-virt", "--list"], capture_output=True, text=True, check=True)
    names = listed.stdout.split()
    assert frozenset(names[names.index("vm-other") + 1 :]) == CONTAINER_IDS


@pytest.mark.parametrize(
    ("lines", "container"),
    [(["Virtualization=systemd-nspawn", "RuntimeWatchdogUSec=0"], "systemd-nspawn"),
     (["RuntimeWatchdogUSec=0", "Virtualization=lxc"], "lxc"), (["Virtualization=kvm"], None),
     (["Virtualization=vm-other"], None), (["RuntimeWatchdogUSec=15s"], None), ([], None)],
)
def test_container_of_the_manager_properties(lines: list[str], container: str | None) -> None:
    assert container_of(lines) == container


# Fact commands against fake sysfs trees
#


def _fake_tools(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, script in {
        "systemd-detect-virt": "echo none; exit 1",
        "uname": "echo x86_64",
    }.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(0o755)


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def _pci(root: Path, slot: str, cls: str, vendor: str, device: str, hfsts1: int | None = None,
         driver: str | None = None) -> None:
    base = root / "sys/bus/pci/devices" / slot
    _write(base / "class", f"{cls}\n")
    _write(base / "vendor", f"{vendor}\n")
    _write(base / "device", f"{device}\n")
    config = bytearray(256)
    if hfsts1 is not None:
        config[0x40:0x44] = struct.pack("<I", hfsts1)
    _write(base / "config", bytes(config))
    if driver:
        (root / "sys/bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
        (base / "driver").symlink_to(root / "sys/bus/pci/drivers" / driver)


def _run_in_fake_root(command: Any, root: Path, tools: Path) -> list[str]:
    text = text_of(command).replace("/sys/", f"{root}/sys/").replace("/dev/mei", f"{root}/dev/mei")
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", "-c", text], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_firmware_command_reads_a_t420_tree(tmp_path: Path) -> None:
    root, tools = tmp_path / "root", tmp_path / "bin"
    _fake_tools(tools)
    expected = fact_case("Firmware", "t420_coreboot")["fact"]
    for field in hw.DMI_FIELDS:
        value = "10" if field == "chassis_type" else expected[field]
        _write(root / "sys/class/dmi/id" / field, f"{value}\n")
    (root / "sys/bus/acpi/devices/BOOT0000:00").mkdir(parents=True)
    (root / "sys/bus/acpi/devices/PNP0C0D:00").mkdir(parents=True)  # the lid, not coreboot
    (root / "sys/bus/coreboot/devices/coreboot0").mkdir(parents=True)
    _pci(root, "0000:00:02.0", "0x030000", "0x8086", "0x0126", driver="i915")
    _pci(root, "0000:00:16.0", "0x078000", "0x8086", "0x1c3a", hfsts1=0x00003182)
    _pci(root, "0000:00:19.0", "0x078000", "0x10ec", "0x8168")  # class 0x0780 but not Intel: not an MEI

    info = hw.Firmware().process(_run_in_fake_root(hw.Firmware().command(), root, tools))

    for field in (*hw.DMI_FIELDS[:-1], "chassis", "coreboot", "coreboot_version", "coreboot_version_prefix"):
        assert info[field] == expected[field], field  # type: ignore[literal-required]
    assert info["coreboot_evidence"] == ["smbios", "acpi:BOOT0000:00", "coreboot-bus"]
    assert (info["arch"], info["vm"], info["container"], info["dmi"]) == ("x86_64", None, None, True)
    assert info["me"]["pci"] == ["0000:00:16.0 0x1c3a -"]
    assert info["me"]["hfsts1"] == "00003182"
    assert info["me"]["status"] == "not-running"


def test_firmware_command_reads_a_t410_tree_with_a_running_me(tmp_path: Path) -> None:
    root, tools = tmp_path / "root", tmp_path / "bin"
    _fake_tools(tools)
    _write(root / "sys/class/dmi/id/bios_vendor", "LENOVO\n")
    _write(root / "sys/class/dmi/id/bios_version", "6IET85WW (1.45 )\n")
    _pci(root, "0000:00:16.0", "0x078000", "0x8086", "0x3b64", hfsts1=0x1E000245, driver="mei_me")
    _write(root / "sys/class/mei/mei0/fw_status", "1E000245\n00000000\n")
    _write(root / "sys/class/mei/mei0/fw_ver", "0:6.1.0.1061\n")
    _write(root / "dev/mei0", "")

    info = hw.Firmware().process(_run_in_fake_root(hw.Firmware().command(), root, tools))

    assert info["bios_version"] == "6IET85WW (1.45 )"
    assert info["coreboot"] is False
    assert info["me"]["pci"] == ["0000:00:16.0 0x3b64 mei_me"]
    assert info["me"]["devices"] == [f"{root}/dev/mei0"]
    assert (info["me"]["status"], info["me"]["firmware_version"]) == ("running", "6.1.0.1061")


def test_battery_command_reads_a_thinkpad_tree(tmp_path: Path) -> None:
    root, tools = tmp_path / "root", tmp_path / "bin"
    _fake_tools(tools)
    supply = root / "sys/class/power_supply"
    for name, value in {"type": "Mains", "online": "1"}.items():
        _write(supply / "AC" / name, f"{value}\n")
    bat0 = {"type": "Battery", "present": "1", "status": "Charging", "capacity": "97", "energy_full": "41250000",
            "energy_full_design": "56160000", "charge_control_start_threshold": "0",
            "charge_control_end_threshold": "100"}
    for name, value in bat0.items():
        _write(supply / "BAT0" / name, f"{value}\n")
    _write(supply / "hidpp_battery_0/type", "Battery\n")
    _write(supply / "hidpp_battery_0/scope", "Device\n")
    (root / "sys/devices/platform/thinkpad_acpi").mkdir(parents=True)

    info = hw.Battery().process(_run_in_fake_root(hw.Battery().command(), root, tools))

    assert info["thinkpad_acpi"] is True and info["ac_online"] is True
    (battery,) = info["batteries"]
    assert battery["name"] == "BAT0" and battery["health"] == 73
    assert (battery["start_threshold"], battery["stop_threshold"], battery["thresholds"]) == (0, 100, True)


# Templates
#

NODE_TEMPLATES = TEMPLATE_DIR / "node_baseline"


def _rendered_by_operations(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Run every node baseline operation that writes a file; return {template: context} they render."""
    calls: dict[str, dict[str, Any]] = {}

    def spy(name: str, **context: Any) -> str:
        calls[name] = context
        return render(name, **context)

    monkeypatch.setattr(hardware, "render", spy)
    facts = {
        "hardware.LidSwitch": {f"path={hardware.LOGIND_DROPIN}": hw.LidSwitch.default()},
        "hardware.Watchdog": hw.Watchdog.default(),
        "hardware.PanicSysctl": hw.PanicSysctl.default(),
        "files.FileStates": {f"paths=('{hardware.WATCHDOG_DROPIN}',)": {}, f"paths=('{hardware.PANIC_SYSCTL}',)": {}},
        "hardware.ManagedUnit": {f"path={hardware.BATTERY_UNIT}": hw.ManagedUnit.default(),
                                 f"path={hardware.CONSOLE_UNIT}": hw.ManagedUnit.default()},
        "hardware.Battery": captured(hw.Battery, "t420_coreboot_thresholds"),
        "hardware.Console": captured(hw.Console, "laptop_never_blanks"),
    }
    run_op(hardware.lid_switch_ignored, facts)
    run_op(hardware.watchdog, facts)
    run_op(hardware.panic_reboot, facts)
    run_op(hardware.battery_thresholds, facts)
    run_op(hardware.console_blanking, facts)
    return calls


def test_every_node_baseline_template_is_rendered_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _rendered_by_operations(monkeypatch)
    on_disk = {f"node_baseline/{p.name}" for p in NODE_TEMPLATES.iterdir() if p.is_file()}
    assert on_disk and set(calls) == on_disk
    for name, context in calls.items():
        text = render(name, **context)
        assert text.startswith("# Managed by portable-k3s") and text.endswith("\n") and not text.endswith("\n\n")
        for key in context:
            with pytest.raises(jinja2.UndefinedError):
                render(name, **{k: v for k, v in context.items() if k != key})


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_logind_dropin_ignores_the_lid_everywhere() -> None:
    login = _ini(render("node_baseline/logind-laptop.conf.j2", settings=hardware.LID_SETTINGS))["Login"]
    assert dict(login) == {
        "HandleLidSwitch": "ignore", "HandleLidSwitchExternalPower": "ignore", "HandleLidSwitchDocked": "ignore",
        "HandleSuspendKey": "ignore", "HandleHibernateKey": "ignore", "IdleAction": "ignore",
    }


@pytest.mark.parametrize(("seconds", "value"), [(15, "15s"), (0, "0s"), (600, "600s")])
def test_watchdog_dropin(seconds: int, value: str) -> None:
    parser = _ini(render("node_baseline/watchdog.conf.j2", runtime_sec=seconds))
    assert parser.sections() == ["Manager"] and dict(parser["Manager"]) == {"RuntimeWatchdogSec": value}


def test_panic_sysctl_file() -> None:
    text = render("node_baseline/panic-sysctl.conf.j2", reboot_sec=10, on_oops=True)
    settings = dict(
        (key.strip(), value.strip()) for key, _, value in
        (line.partition("=") for line in text.splitlines() if line and not line.startswith("#"))
    )
    assert settings == {"kernel.panic": "10", "kernel.panic_on_oops": "1"}
    assert "kernel.panic_on_oops = 0" in render("node_baseline/panic-sysctl.conf.j2", reboot_sec=0, on_oops=False)


def _exec_start(unit_text: str) -> str:
    """A unit's ExecStart as the shell sees it: systemd turns $$ into $."""
    service = _ini(unit_text)["Service"]
    return service["ExecStart"].replace("$$", "$")


def test_console_blank_unit() -> None:
    parser = _ini(render("node_baseline/console-blank.service.j2", minutes=2))
    assert parser["Unit"]["ConditionPathExists"] == "/dev/tty1"
    assert parser["Service"]["TTYPath"] == "/dev/tty1" and parser["Service"]["StandardOutput"] == "tty"
    assert parser["Service"]["ExecStart"] == "/usr/bin/setterm --term linux --blank 2 --powerdown 2"
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_battery_unit_script_sets_every_battery_that_has_thresholds(tmp_path: Path) -> None:
    text = render("node_baseline/battery-thresholds.service.j2", start=40, stop=80)
    assert _ini(text)["Install"]["WantedBy"] == "multi-user.target"
    argv = shlex.split(_exec_start(text))
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3
    script = argv[2].replace("/sys/class/power_supply", str(tmp_path))
    for name, (start, stop) in {"BAT0": ("0", "100"), "BAT1": ("85", "90")}.items():
        _write(tmp_path / name / "charge_control_start_threshold", f"{start}\n")
        _write(tmp_path / name / "charge_control_end_threshold", f"{stop}\n")
    _write(tmp_path / "AC/online", "1\n")  # no thresholds: skipped
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    for name in ("BAT0", "BAT1"):
        assert (tmp_path / name / "charge_control_start_threshold").read_text().strip() == "40"
        assert (tmp_path / name / "charge_control_end_threshold").read_text().strip() == "80"
    assert not (tmp_path / "AC/charge_control_start_threshold").exists()


def test_battery_unit_script_fails_when_a_battery_refuses(tmp_path: Path) -> None:
    script = shlex.split(_exec_start(render("node_baseline/battery-thresholds.service.j2", start=40, stop=80)))[2]
    _write(tmp_path / "BAT0/charge_control_start_threshold", "0\n")
    _write(tmp_path / "BAT0/charge_control_end_threshold", "100\n")
    # A "battery" whose end threshold can be written but whose start threshold never changes.
    (tmp_path / "BAT0/charge_control_start_threshold").unlink()
    (tmp_path / "BAT0/charge_control_start_threshold").mkdir()
    proc = subprocess.run(["sh", "-c", script.replace("/sys/class/power_supply", str(tmp_path))],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1


# Data keys in the configuration model
#


def _problems(**data: Any) -> list[str]:
    from test_config import good_data, make_inventory, problems_of

    return problems_of(make_inventory(data={**good_data(), **data}))  # type: ignore[no-any-return]


def test_default_values_are_valid_data() -> None:
    assert _problems(**DEFAULTS) == []
    assert _problems(battery_charge_thresholds=None, watchdog_sec=0, kernel_panic_reboot_sec=0,
                     console_blank_minutes=0, firmware_policy={}) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"firmware_policy": {"require_coreboot": "strict"}},
         "all.firmware_policy.require_coreboot: 'strict' is not a policy level (expected 'off', 'warn' or 'fail')"),
        ({"firmware_policy": {"require_tpm": "fail"}},
         "all.firmware_policy.require_tpm: is not a firmware check (expected require_coreboot or require_me_disabled)"),
        ({"firmware_policy": "fail"},
         "all.firmware_policy: 'fail' is a str (expected a dict like {\"require_coreboot\": \"warn\", "
         "\"require_me_disabled\": \"warn\"})"),
        ({"laptop": "yes"}, "all.laptop: 'yes' is a str (expected True or False)"),
        ({"battery_charge_thresholds": {"start": 80, "stop": 40}},
         'all.battery_charge_thresholds: start 80 is not below stop 40 (expected percentages with 0 < start < '
         'stop <= 100, like {"start": 40, "stop": 80})'),
        ({"battery_charge_thresholds": {"start": 0, "stop": 80}},
         "all.battery_charge_thresholds.start: 0 is out of range"),
        ({"battery_charge_thresholds": {"start": 40}}, "all.battery_charge_thresholds.stop: is missing"),
        ({"battery_charge_thresholds": {"start": 40, "stop": 80, "full": 100}},
         "all.battery_charge_thresholds.full: is not a threshold (expected start and stop)"),
        ({"watchdog_sec": 3}, "all.watchdog_sec: 3 is out of range (expected 0 (off) or 5-600 seconds)"),
        ({"watchdog_sec": "15s"}, "all.watchdog_sec: '15s' is a str (expected 0 (off) or 5-600 seconds)"),
        ({"kernel_panic_reboot_sec": -1}, "all.kernel_panic_reboot_sec: -1 is out of range"),
        ({"kernel_panic_on_oops": 1}, "all.kernel_panic_on_oops: 1 is an int (expected True or False)"),
        ({"console_blank_minutes": 61}, "all.console_blank_minutes: 61 is out of range (expected whole minutes 0-60"),
    ],
)
def test_bad_node_baseline_data(data: dict[str, Any], expected: str) -> None:
    problems = _problems(**data)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_node_baseline_problems_name_the_host() -> None:
    from test_config import good_data, good_groups, make_inventory, problems_of

    groups = good_groups()
    hosts = [(name, {**data, "watchdog_sec": 1}) if name == "t410" else (name, data)
             for name, data in groups["k3s_agents"][0]]
    groups["k3s_agents"] = (hosts, {"firmware_policy": {"require_me_disabled": "maybe"}})
    problems = problems_of(make_inventory(data=good_data(), groups=groups))
    assert sorted(problems) == [
        "k3s_agents.firmware_policy.require_me_disabled: 'maybe' is not a policy level "
        "(expected 'off', 'warn' or 'fail')",
        "t410.watchdog_sec: 1 is out of range (expected 0 (off) or 5-600 seconds)",
    ]


# Deploy wiring on @fake hosts
#

SEP = "--portable-k3s--"
FACT_PATTERNS = {
    "Firmware": r'^echo "arch=',
    "Battery": r"^for p in /sys/class/power_supply/",
    "SleepTargets": r"^systemctl show -p Id -p LoadState",
    "Console": r"^\[ -e /dev/tty1 \]",
    "LidSwitch": r"^sha256sum /etc/systemd/logind\.conf\.d/",
    "Watchdog": r'^echo "\$\{PORTABLE_K3S_MANAGER-.*/sys/class/watchdog',
    "PanicSysctl": r"^v=; read -r v 2>/dev/null </proc/sys/kernel/panic;",
    "WatchdogDropin": r"^stat -c 'stat %a %U %G %n' -- /etc/systemd/system\.conf\.d/",
    "PanicDropin": r"^stat -c 'stat %a %U %G %n' -- /etc/sysctl\.d/",
    "ManagedUnit": r"^sha256sum /etc/systemd/system/portable-k3s-",
}
FACT_RE = re.compile("|".join(FACT_PATTERNS.values()))
LAPTOP_OPS = [
    "Node baseline | Read the firmware, watchdog and panic settings in one command",
    "Node baseline | Check the firmware policy",
    "Node baseline | Ignore the lid switch",
    "Node baseline | Disable sleep and hibernation",
    "Node baseline | Set battery charge thresholds",
    "Node baseline | Blank the idle console",
    "Node baseline | Arm the systemd watchdog",
    "Node baseline | Reboot after a kernel panic",
]
SERVER_OPS = [*LAPTOP_OPS[:2], *LAPTOP_OPS[-2:]]
AFTER = "Deployed after the baseline"


def file_state(path: str, text: str) -> str:
    """``FileStates``' output for one file that holds ``text`` (mode 644, root's)."""
    return f"stat 644 root root {path}\n{sha256(text)}  {path}"


def fresh_t420_responses(firmware: str = "t420_coreboot") -> dict[str, str]:
    """A ThinkPad before the deploy, as its facts answer."""
    return {
        FACT_PATTERNS["Firmware"]: output_text("Firmware", firmware),
        FACT_PATTERNS["Battery"]: output_text("Battery", "t420_coreboot_thresholds"),
        FACT_PATTERNS["SleepTargets"]: output_text("SleepTargets", "debian_defaults"),
        FACT_PATTERNS["Console"]: output_text("Console", "laptop_never_blanks"),
        FACT_PATTERNS["LidSwitch"]: output_text("LidSwitch", "t420_stock_logind"),
        FACT_PATTERNS["Watchdog"]: output_text("Watchdog", "t420_fresh"),
        FACT_PATTERNS["PanicSysctl"]: output_text("PanicSysctl", "bare_metal_fresh"),
        FACT_PATTERNS["ManagedUnit"]: output_text("ManagedUnit", "absent"),
    }


class FailingConnector(FakeConnector):
    """The ``@fake`` connector, except that a command ending in ``exit 1`` fails (as it would on a host)."""

    def run_shell_command(self, command: Any, print_output: bool = False, print_input: bool = False,
                          **arguments: Any) -> Any:
        status, output = super().run_shell_command(command, print_output, print_input, **arguments)
        return (not text_of(command).endswith("exit 1") and status), output


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, fake_connector: type[FakeConnector]) -> type[FakeConnector]:
    """The failing ``@fake`` connector, with operations ordered as the CLI orders them (by line)."""
    import pyinfra
    import pyinfra.api.inventory as inventory_mod

    monkeypatch.setattr(pyinfra, "is_cli", True)
    original_all = inventory_mod.get_all_connectors
    original_exec = inventory_mod.get_execution_connectors
    monkeypatch.setattr(inventory_mod, "get_all_connectors", lambda: {**original_all(), "fake": FailingConnector})
    monkeypatch.setattr(inventory_mod, "get_execution_connectors",
                        lambda: {**original_exec(), "fake": FailingConnector})
    return fake_connector


def reference_deploy() -> None:
    """What deploy.py does for a host: the node baseline first on nodes, then everything else."""
    if is_node(current_host.groups):
        node_baseline()
    server.shell(name="Deployed after the baseline", commands=["touch /deployed-after-the-baseline"])


def plan(connector: type[FakeConnector], groups: dict[str, list[tuple[str, dict[str, Any]]]],
         responses: dict[str, str]) -> State:
    """Plan ``reference_deploy`` on each host, as the CLI does with a deploy file."""
    connector.responses.update(responses)
    names = [name for hosts in groups.values() for name, _ in hosts]
    inventory = Inventory((names, {}), **{group: (hosts, {}) for group, hosts in groups.items()})
    state = State(inventory, Config())
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    for each in inventory:
        with ctx_state.use(state), ctx_host.use(each):
            reference_deploy()
    state.set_stage(StateStage.Execute)
    return state


def op_names(state: State, host_name: str) -> list[str]:
    (h,) = [h for h in state.inventory if h.name == host_name]
    return [next(iter(state.op_meta[op].names)) for op in state.get_op_order() if op in state.ops[h]]


def changes(connector: type[FakeConnector], host_name: str) -> list[Any]:
    return [e for e in connector.log.get(host_name, [])
            if not (isinstance(e, str) and (FACT_RE.search(e) or PREFETCH_MARK in e))]


def test_every_operation_call_in_node_baseline_is_named() -> None:
    tree = ast.parse(inspect.getsource(node_baseline_mod.node_baseline))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id in ("hardware", "prefetch")]
    assert len(calls) == len(LAPTOP_OPS)
    for call in calls:
        names = [kw.value for kw in call.keywords if kw.arg == "name"]
        assert len(names) == 1 and isinstance(names[0], ast.Constant), ast.dump(call)


def test_node_groups() -> None:
    assert NODE_GROUPS == {"k3s_servers", "k3s_agents", "exit_nodes"}
    assert is_node(["k3s_agents", "home"]) and not is_node(["headscale", "entrance", "home"])


def test_deploy_py_runs_the_baseline_first_on_nodes() -> None:
    """In deploy.py the node baseline, guarded by the node groups, comes before every other deploy or operation."""
    tree = ast.parse((REPO / "deploy.py").read_text())
    (guard,) = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "is_node(host.groups)"]
    assert [ast.unparse(n) for n in guard.body] == ["node_baseline()"]
    deploys, op_modules = set(), set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("portable_k3s.deploys."):
            module = importlib.import_module(node.module or "")
            deploys |= {alias.asname or alias.name for alias in node.names
                        if hasattr(getattr(module, alias.name), "_inner")}  # @deploy functions
        if isinstance(node, ast.ImportFrom) and node.module in ("portable_k3s.operations", "pyinfra.operations"):
            op_modules |= {alias.asname or alias.name for alias in node.names}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    deploying = [n for n in calls if (isinstance(n.func, ast.Name) and n.func.id in deploys)
                 or (isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                     and n.func.value.id in op_modules)]
    assert {n.func.id for n in deploying if isinstance(n.func, ast.Name)} >= {"node_baseline", "base_host"}
    for call in deploying:
        if ast.unparse(call.func) == "prefetch.host_state":
            continue  # reads the host's state, changes nothing
        if ast.unparse(call) != "node_baseline()":
            assert call.lineno > guard.lineno, f"deploy.py line {call.lineno} deploys before the node baseline"


def test_laptop_and_server_plans(fake: type[FakeConnector]) -> None:
    groups = {
        "k3s_agents": [("@fake/t420", {"laptop": True})],
        "k3s_servers": [("@fake/master", {})],
        "headscale": [("@fake/cloud", {})],
    }
    state = plan(fake, groups, fresh_t420_responses())
    assert op_names(state, "@fake/t420") == [*LAPTOP_OPS, AFTER]
    assert op_names(state, "@fake/master") == [*SERVER_OPS, AFTER]
    assert op_names(state, "@fake/cloud") == [AFTER]
    fake.log.clear()
    run_ops(state)
    t420 = changes(fake, "@fake/t420")
    expected_units = ["portable-k3s-battery-thresholds.service", "portable-k3s-console-blank.service"]
    assert [e[1] for e in t420 if isinstance(e, tuple)] == [
        hardware.LOGIND_DROPIN, *(f"/etc/systemd/system/{unit}" for unit in expected_units),
        hardware.WATCHDOG_DROPIN, hardware.PANIC_SYSCTL,
    ]
    commands = [e for e in t420 if isinstance(e, str)]
    assert commands.index("systemctl try-reload-or-restart systemd-logind.service") < commands.index(
        "systemctl mask sleep.target suspend.target hibernate.target hybrid-sleep.target "
        "suspend-then-hibernate.target")
    assert commands.count("systemctl daemon-reexec") == 1
    assert f"sysctl -q -p {hardware.PANIC_SYSCTL}" in commands
    assert commands[-1] == "touch /deployed-after-the-baseline"
    assert not any("logind" in e or "mask" in e for e in changes(fake, "@fake/master") if isinstance(e, str))
    assert state.failed_hosts == set()


def test_host_data_reaches_the_operations(fake: type[FakeConnector]) -> None:
    data = {"laptop": True, "battery_charge_thresholds": None, "watchdog_sec": 30, "kernel_panic_reboot_sec": 60,
            "kernel_panic_on_oops": False, "console_blank_minutes": 5}
    state = plan(fake, {"k3s_agents": [("@fake/t420", data)]}, fresh_t420_responses())
    assert "Node baseline | Set battery charge thresholds" not in op_names(state, "@fake/t420")
    t420 = state.inventory.get_host("@fake/t420")
    ops = {next(iter(state.op_meta[h].names)): state.ops[t420][h] for h in state.get_op_order()}

    def upload(name: str) -> str:
        with ctx_state.use(state), ctx_host.use(t420):
            (content,) = [c.src.getvalue() for c in ops[name].command_generator() if hasattr(c, "src")]
        return content  # type: ignore[no-any-return]

    watchdog = render("node_baseline/watchdog.conf.j2", runtime_sec=30)
    assert upload("Node baseline | Arm the systemd watchdog") == watchdog
    assert "kernel.panic = 60\nkernel.panic_on_oops = 0\n" in upload("Node baseline | Reboot after a kernel panic")
    assert "--blank 5 --powerdown 5" in upload("Node baseline | Blank the idle console")


def test_converged_laptop_changes_nothing(fake: type[FakeConnector]) -> None:
    logind = render("node_baseline/logind-laptop.conf.j2", settings=hardware.LID_SETTINGS)
    battery_unit = render("node_baseline/battery-thresholds.service.j2", start=40, stop=80)
    console_unit = render("node_baseline/console-blank.service.j2", minutes=1)
    responses = {
        FACT_PATTERNS["Firmware"]: output_text("Firmware", "t420_coreboot"),
        FACT_PATTERNS["Battery"]: output_text("Battery", "t420_converged_two_batteries"),
        FACT_PATTERNS["SleepTargets"]: output_text("SleepTargets", "all_masked"),
        FACT_PATTERNS["Console"]: output_text("Console", "laptop_blanks_after_a_minute"),
        FACT_PATTERNS["LidSwitch"]: output_text("LidSwitch", "t420_converged"),
        FACT_PATTERNS["Watchdog"]: output_text("Watchdog", "t420_converged"),
        FACT_PATTERNS["PanicSysctl"]: output_text("PanicSysctl", "bare_metal_converged"),
        FACT_PATTERNS["WatchdogDropin"]: file_state(hardware.WATCHDOG_DROPIN, render(
            "node_baseline/watchdog.conf.j2", runtime_sec=DEFAULTS["watchdog_sec"])),
        FACT_PATTERNS["PanicDropin"]: file_state(hardware.PANIC_SYSCTL, render(
            "node_baseline/panic-sysctl.conf.j2", reboot_sec=DEFAULTS["kernel_panic_reboot_sec"],
            on_oops=DEFAULTS["kernel_panic_on_oops"])),
        r"^sha256sum /etc/systemd/system/portable-k3s-battery": "\n".join([sha256(battery_unit), "", SEP,
                                                                               "enabled", "", SEP, "active"]),
        r"^sha256sum /etc/systemd/system/portable-k3s-console": "\n".join([sha256(console_unit), "", SEP,
                                                                               "enabled", "", SEP, "active"]),
    }
    assert sha256(logind) in responses[FACT_PATTERNS["LidSwitch"]]
    state = plan(fake, {"k3s_agents": [("@fake/t420", {"laptop": True, "firmware_policy": {
        "require_coreboot": "fail", "require_me_disabled": "fail"}})]}, responses)
    (h,) = state.inventory
    meta = state.get_meta_for_host(h)
    assert (meta.ops, meta.ops_change) == (len(LAPTOP_OPS) + 1, 1)  # only the "after" stand-in changes
    fake.log.clear()
    run_ops(state)
    assert changes(fake, "@fake/t420") == ["touch /deployed-after-the-baseline"]


def test_fail_policy_stops_only_that_host(fake: type[FakeConnector], caplog: pytest.LogCaptureFixture) -> None:
    """The failing policy check is the stopped host's first change; it fails there, and pyinfra runs nothing
    after it on that host while the other host converges."""
    caplog.set_level(logging.ERROR, logger="pyinfra")
    responses = fresh_t420_responses()
    t410_firmware = output_text("Firmware", "t410_stock_bios")
    groups = {"k3s_agents": [("@fake/t420", {"laptop": True}),
                             ("@fake/t410", {"laptop": True, "firmware_policy": {"require_coreboot": "fail"}})]}
    fake.responses.update(responses)

    class PerHost(FailingConnector):
        def run_shell_command(self, command: Any, print_output: bool = False, print_input: bool = False,
                              **arguments: Any) -> Any:
            if self.host.name == "@fake/t410" and re.search(FACT_PATTERNS["Firmware"], text_of(command)):
                FakeConnector.log.setdefault(self.host.name, []).append(text_of(command))
                from pyinfra.connectors.util import CommandOutput, OutputLine
                return True, CommandOutput([OutputLine("stdout", line) for line in t410_firmware.splitlines()])
            return super().run_shell_command(command, print_output, print_input, **arguments)

    import pyinfra.api.inventory as inventory_mod
    original_exec = inventory_mod.get_execution_connectors
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inventory_mod, "get_all_connectors", lambda: {**original_exec(), "fake": PerHost})
        patch.setattr(inventory_mod, "get_execution_connectors", lambda: {**original_exec(), "fake": PerHost})
        state = plan(fake, groups, {})
        # Both planned in full (planning reads nothing); the check stops t410 when it runs.
        assert op_names(state, "@fake/t410") == [*LAPTOP_OPS, AFTER]
        assert op_names(state, "@fake/t420") == [*LAPTOP_OPS, AFTER]
        planned = [r.getMessage() for r in caplog.records]
        assert len(planned) == 1 and 'firmware_policy.require_coreboot is "fail"' in planned[0]
        assert "6IET85WW (1.45 )" in planned[0]
        fake.log.clear()
        run_ops(state)

    assert {h.name for h in state.failed_hosts} == {"@fake/t410"}
    (failing,) = changes(fake, "@fake/t410")
    assert failing.startswith("echo 'firmware_policy.require_coreboot is \"fail\" and LENOVO ThinkPad T410")
    assert failing.endswith(">&2; exit 1")
    t420 = changes(fake, "@fake/t420")
    assert t420[-1] == "touch /deployed-after-the-baseline" and len(t420) > 10


def test_warn_policy_carries_on(fake: type[FakeConnector], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pyinfra")
    policy = {"require_coreboot": "warn", "require_me_disabled": "warn"}
    state = plan(fake, {"k3s_servers": [("@fake/master", {"firmware_policy": policy})]},
                 fresh_t420_responses("fanless_ami_bios"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].endswith('firmware_policy.require_coreboot is "warn": an unbranded machine runs American '
                                'Megatrends International, LLC. firmware ADLN.M6.SODIMM.ZB.CY.015 of 08/08/2023, '
                                'not coreboot')
    assert 'firmware_policy.require_me_disabled is "warn": the Intel ME is running' in warnings[1]
    caplog.clear()
    run_ops(state)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert state.failed_hosts == set()
    assert changes(fake, "@fake/master")[-1] == "touch /deployed-after-the-baseline"


def test_partial_firmware_policy_keeps_the_other_default() -> None:
    assert node_baseline_mod.firmware_policy_levels({"require_me_disabled": "fail"}) == {
        "require_coreboot": "off", "require_me_disabled": "fail"}
    assert node_baseline_mod.firmware_policy_levels(None) == DEFAULTS["firmware_policy"]


def test_operations_refuse_bad_arguments_before_reading_facts() -> None:
    for op, kwargs in [
        (hardware.firmware_policy, {"require_coreboot": "never"}),
        (hardware.battery_thresholds, {"start": 0, "stop": 80}),
        (hardware.console_blanking, {"minutes": True}),
        (hardware.watchdog, {"runtime_sec": 601}),
        (hardware.panic_reboot, {"reboot_sec": 3601}),
    ]:
        with pytest.raises(OperationValueError):
            run_op(op, {}, **kwargs)
