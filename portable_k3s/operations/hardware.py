"""Operations for a node's hardware baseline: the firmware policy check, laptop-as-server settings (lid
switch, sleep, battery charge thresholds, console blanking), the systemd watchdog and the kernel's reboot
after a panic.

Nothing here flashes or changes firmware: the firmware policy only checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from io import StringIO
from typing import Any, NamedTuple

from pyinfra import host, logger
from pyinfra.api import OperationValueError, QuoteString, StringCommand
from pyinfra.api.command import FileUploadCommand

from ..adapter import executing, run_store
from ..facts.files import FileStates
from ..facts.hardware import (
    LOGIND_KEYS,
    SLEEP_TARGETS,
    Battery,
    Console,
    Firmware,
    LidSwitch,
    ManagedUnit,
    ManagedUnitInfo,
    PanicSysctl,
    SleepTargets,
    Watchdog,
)
from ..render import render, sha256
from ..settings.node_baseline import (  # noqa: F401 - FIRMWARE_CHECKS: the policy names, kept here too
    BATTERY_THRESHOLD_RANGE,
    CONSOLE_BLANK_MINUTES_RANGE,
    FIRMWARE_CHECKS,
    PANIC_REBOOT_SEC_RANGE,
    POLICY_LEVELS,
    WATCHDOG_SEC_RANGE,
)
from .util import file_checksum, host_operation, shared_fact

LOGIND_DROPIN = "/etc/systemd/logind.conf.d/90-portable-k3s-laptop.conf"
WATCHDOG_DROPIN = "/etc/systemd/system.conf.d/90-portable-k3s-watchdog.conf"
PANIC_SYSCTL = "/etc/sysctl.d/90-portable-k3s-panic.conf"
BATTERY_UNIT = "/etc/systemd/system/portable-k3s-battery-thresholds.service"
CONSOLE_UNIT = "/etc/systemd/system/portable-k3s-console-blank.service"


# What a laptop-as-server sets in logind: the lid (on battery, on external power, docked), the sleep keys
# and idleness do nothing.
LID_SETTINGS: dict[str, str] = {key: "ignore" for key in LOGIND_KEYS}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _upload(content: str, path: str) -> list[StringCommand | FileUploadCommand]:
    return [
        StringCommand("mkdir -p", QuoteString(os.path.dirname(path) or ".")),
        FileUploadCommand(StringIO(content), path),
    ]


# Firmware policy
#


class PolicyFinding(NamedTuple):
    """One firmware check on one host: its policy level, whether the host complies, and what was found."""

    check: str
    level: str
    complies: bool
    found: str

    @property
    def key(self) -> str:
        return f"firmware_policy.{self.check}"

    def message(self) -> str:
        """What a host that does not comply is told (quoted with double quotes: it also goes through a shell)."""
        if self.level == "fail":
            return (
                f'{self.key} is "fail" and {self.found}: nothing else is deployed to this host '
                f'(fix the firmware, or set {self.key} to "warn" or "off" for it)'
            )
        return f'{self.key} is "{self.level}": {self.found}'

    def summary(self) -> str:
        if self.level == "off":
            return f'{self.key} is "off": {self.found}'
        return f'{self.key} is "{self.level}", {"complies" if self.complies else "does not comply"}: {self.found}'


# DMI strings cheap boards leave at the vendor's placeholder.
DMI_PLACEHOLDERS = frozenset({
    "default string", "to be filled by o.e.m.", "system product name", "system manufacturer", "system version",
    "not applicable", "not specified", "none", "o.e.m.", "oem", "0123456789", "x.x",
})


def describe_machine(info: Mapping[str, Any]) -> str:
    """A short name for the machine from its DMI strings, e.g. ``LENOVO ThinkPad T420 (4180A21)``."""
    if not info["dmi"]:
        virt = " on ".join(v for v in (info["container"], info["vm"]) if v)
        return f"a host without DMI ({virt})" if virt else "a host without DMI"
    names: list[str] = []
    for name in (info["sys_vendor"], info["product_version"], info["product_name"]):
        if name and name.lower() not in DMI_PLACEHOLDERS and name not in names:
            names.append(name)
    if len(names) == 3:
        return f"{names[0]} {names[1]} ({names[2]})"
    return " ".join(names) or "an unbranded machine"


def _coreboot_found(info: Mapping[str, Any]) -> str:
    machine = describe_machine(info)
    if info["coreboot"]:
        version = info["coreboot_version"] or "of unknown version"
        prefix = info["coreboot_version_prefix"]
        prefix_text = f", BIOS version prefix {prefix}" if prefix else ""
        return f"{machine} runs coreboot {version}{prefix_text} (seen as {', '.join(info['coreboot_evidence'])})"
    if info["coreboot"] is False:
        firmware = " ".join(v for v in (info["bios_vendor"], "firmware", info["bios_version"]) if v)
        date = f" of {info['bios_date']}" if info["bios_date"] else ""
        return f"{machine} runs {firmware}{date}, not coreboot"
    virt = " on ".join(v for v in (info["container"], info["vm"]) if v)
    where = f"; this host is virtualised ({virt})" if virt else ""
    return (
        "the firmware is unknown: no DMI tables (/sys/class/dmi/id) and no coreboot device "
        f"(ACPI BOOT0000){where}, so coreboot cannot be confirmed"
    )


def firmware_findings(info: Mapping[str, Any], require_coreboot: str, require_me_disabled: str) -> list[PolicyFinding]:
    """
    Check a ``Firmware`` fact against the firmware policy; one finding per check, ``off`` ones included.

    + info: a ``facts.hardware.Firmware`` answer
    + require_coreboot: ``off``, ``warn`` or ``fail``; complies when coreboot is detected
    + require_me_disabled: ``off``, ``warn`` or ``fail``; complies when the Intel ME is absent, disabled or
      not running (an unknown ME does not comply)
    """
    me = info["me"]
    me_complies = me["status"] in ("absent", "disabled", "not-running")
    me_found = {
        "absent": "the Intel ME is absent",
        "disabled": "the Intel ME is disabled",
        "not-running": "the Intel ME is not running",
        "running": "the Intel ME is running",
        "unknown": "the Intel ME's state is unknown",
    }.get(me["status"], f"the Intel ME is {me['status']}")
    return [
        PolicyFinding("require_coreboot", require_coreboot, info["coreboot"] is True, _coreboot_found(info)),
        PolicyFinding("require_me_disabled", require_me_disabled, me_complies, f"{me_found}: {me['reason']}"),
    ]


def _check_levels(require_coreboot: str, require_me_disabled: str) -> None:
    for name, level in (("require_coreboot", require_coreboot), ("require_me_disabled", require_me_disabled)):
        if level not in POLICY_LEVELS:
            raise OperationValueError(f"{name}: {level!r} (expected one of {', '.join(POLICY_LEVELS)})")


def _removed_unit(unit: str, unit_info: ManagedUnitInfo) -> Iterator[str | StringCommand]:
    """Commands that disable and remove a unit this module manages (a no-op when it is absent)."""
    name = os.path.basename(unit)
    if unit_info["sha256"] is None:
        host.noop(f"{name} is absent")
        return
    yield StringCommand("systemctl disable", QuoteString(name), "2>/dev/null || true")
    yield StringCommand("rm -f", QuoteString(unit))
    yield "systemctl daemon-reload"


@host_operation()
def firmware_policy(require_coreboot: str = "off", require_me_disabled: str = "off"):
    """
    Check the host's firmware against a policy; nothing is flashed or changed.

    A check set to ``warn`` that the host does not comply with is reported as a warning and the deploy
    carries on. One set to ``fail`` makes this operation fail on that host with a message naming the policy
    key and what was found: make it the host's first operation, and pyinfra runs nothing after it on that
    host while the other hosts carry on. ``--dry`` shows the message too. With both checks ``off`` the
    firmware is not read at all.

    + require_coreboot: ``off``, ``warn`` or ``fail``: the host must run coreboot (SMBIOS vendor, or the ACPI
      device ``BOOT0000``); unknown firmware (no DMI) does not comply
    + require_me_disabled: ``off``, ``warn`` or ``fail``: the Intel ME must be absent, disabled or not running
      (unknown, e.g. in a VM, does not comply; machines that are not x86 have no ME)

    **Example:**

    .. code:: python

        hardware.firmware_policy(name="Check the firmware policy", require_coreboot="fail")
    """
    _check_levels(require_coreboot, require_me_disabled)
    if require_coreboot == require_me_disabled == "off":
        host.noop("every firmware check is off: the firmware is not read")
        return
    info = shared_fact(host, Firmware, static=True)  # read once per run (a --dry run reads it when planning)
    findings = firmware_findings(info, require_coreboot, require_me_disabled)
    failures = [f for f in findings if f.level == "fail" and not f.complies]
    reported: dict[str, bool] = run_store(host, "firmware_reported", dict)  # planned with --dry/--diff, then run
    first = not reported
    reported["once"] = True
    for finding in findings:
        if first and finding.level == "warn" and not finding.complies:
            logger.warning(f"{host.print_prefix}{finding.message()}")
    if failures:
        message = "; ".join(f.message() for f in failures)
        if not executing(host.state):  # --dry: the command below never runs to print it
            logger.error(f"{host.print_prefix}{message}")
        yield StringCommand("echo", QuoteString(message), ">&2; exit 1")
        return
    host.noop("; ".join(finding.summary() for finding in findings))


# Laptop as a server
#


@host_operation()
def lid_switch_ignored(path: str = LOGIND_DROPIN, present: bool = True):
    """
    Make logind ignore the lid switch (on battery, on external power and docked), the suspend and hibernate
    keys and idleness, so a closed laptop keeps serving.

    logind is restarted only when its config changed or it still runs with other settings, with
    ``systemctl try-reload-or-restart``: a reload (SIGHUP) where the unit supports it, else a restart,
    which keeps existing sessions, the deploy's own SSH session included. A later drop-in that overrides a
    setting is reported instead of restarting logind on every run.

    + path: the logind drop-in
    + present: ``False`` removes the drop-in again (and restarts logind if it runs)

    **Example:**

    .. code:: python

        hardware.lid_switch_ignored(name="Ignore the lid switch")
    """
    info = host.get_fact(LidSwitch, path=path)
    restart = "systemctl try-reload-or-restart systemd-logind.service"
    if not present:
        if info["dropin_sha256"] is None:
            host.noop("the logind lid switch drop-in is absent")
            return
        yield StringCommand("rm -f", QuoteString(path))
        if info["logind_active"]:
            yield restart
        return
    content = render("node_baseline/logind-laptop.conf.j2", settings=LID_SETTINGS)
    changed = info["dropin_sha256"] != sha256(content)
    if changed:
        yield from _upload(content, path)
    configured, in_effect = info["configured"], info["in_effect"]
    overridden = {k: v for k, v in configured.items() if not changed and LID_SETTINGS.get(k, v) != v}
    for key, value in overridden.items() if not executing(host.state) else ():
        logger.warning(
            f"{host.print_prefix}logind: {key}={value} from a drop-in that sorts after {path} overrides "
            f"{key}={LID_SETTINGS[key]} (remove it, or the lid may still suspend this host)"
        )
    pending = any(in_effect.get(k) != v for k, v in LID_SETTINGS.items() if k not in overridden)
    if info["logind_active"] and (changed or (in_effect and pending)):
        yield restart
        return
    if not changed:
        lid = f"lid {info['lid_state'] or 'present'}" if info["lid"] else "no lid switch found"
        running = "logind runs with it" if info["logind_active"] else "logind is not running"
        but = f", except {', '.join(sorted(overridden))} (overridden by a later drop-in)" if overridden else ""
        host.noop(f"the logind drop-in ignores the lid switch and sleep keys{but} ({lid}; {running})")


@host_operation()
def sleep_masked(present: bool = True):
    """
    Mask the systemd sleep targets (sleep, suspend, hibernate, hybrid-sleep, suspend-then-hibernate), so
    nothing can put the host to sleep.

    + present: ``False`` unmasks them again

    **Example:**

    .. code:: python

        hardware.sleep_masked(name="Disable sleep and hibernation")
    """
    states = host.get_fact(SleepTargets)
    known = [unit for unit in SLEEP_TARGETS if states.get(unit, "not-found") != "not-found"]
    if present:
        todo = [unit for unit in known if states.get(unit) != "masked"]
        verb = "mask"
    else:
        todo = [unit for unit in known if states.get(unit) == "masked"]
        verb = "unmask"
    if not todo:
        host.noop(f"sleep targets are {'masked' if present else 'not masked'}: {', '.join(known) or 'none found'}")
        return
    yield StringCommand("systemctl", verb, *todo)


def _unit_steps(content: str, path: str, unit_info: Mapping[str, Any]) -> list[Any]:
    """Commands that put a boot-time unit in place (when it differs) and enable it (when it is not)."""
    commands: list[Any] = []
    if unit_info["sha256"] != sha256(content):
        commands += [*_upload(content, path), "systemctl daemon-reload"]
    if not unit_info["enabled"]:
        commands.append(StringCommand("systemctl enable", QuoteString(os.path.basename(path))))
    return commands


@host_operation()
def battery_thresholds(start: int = 40, stop: int = 80, unit: str = BATTERY_UNIT, present: bool = True):
    """
    Keep the batteries of an always-plugged-in laptop between two charge levels, where the kernel offers
    thresholds (thinkpad_acpi's ``charge_control_start_threshold``/``charge_control_end_threshold``). A
    boot-time unit sets them, now and at every boot; it runs again only when a battery's thresholds differ.
    Where no battery offers thresholds (no battery, a container, firmware without support) nothing is written.

    + start: charging starts below this percentage (1-99)
    + stop: charging stops at this percentage (start < stop <= 100)
    + unit: the systemd unit file
    + present: ``False`` disables and removes the unit (the thresholds stay until the battery is reset)

    **Example:**

    .. code:: python

        hardware.battery_thresholds(name="Set battery charge thresholds", start=40, stop=80)
    """
    low, high = BATTERY_THRESHOLD_RANGE
    if not (_is_int(start) and _is_int(stop) and low <= start < stop <= high):
        raise OperationValueError(
            f"start, stop: {start!r}, {stop!r} (expected integers with {low} <= start < stop <= {high})"
        )
    unit_info = host.get_fact(ManagedUnit, path=unit)
    name = os.path.basename(unit)
    if not present:
        yield from _removed_unit(unit, unit_info)
        return
    info = host.get_fact(Battery)
    capable = [battery for battery in info["batteries"] if battery["thresholds"]]
    if not capable:
        names = [b["name"] for b in info["batteries"]]
        if names:
            offer = "offers" if len(names) == 1 else "offer"
            host.noop(
                f"no charge thresholds to set: {', '.join(names)} {offer} none (thinkpad_acpi has them only where "
                "the firmware does, e.g. not on a T410 with the stock BIOS)"
            )
        else:
            host.noop("no charge thresholds to set: this host has no battery")
        return
    content = render("node_baseline/battery-thresholds.service.j2", start=start, stop=stop)
    commands = _unit_steps(content, unit, unit_info)
    differ = [b["name"] for b in capable if (b["start_threshold"], b["stop_threshold"]) != (start, stop)]
    if differ:
        commands.append(StringCommand("systemctl restart", QuoteString(name)))
    if not commands:
        host.noop(f"charge thresholds are {start}-{stop}% on {', '.join(b['name'] for b in capable)}")
        return
    yield from commands


@host_operation()
def console_blanking(minutes: int = 1, unit: str = CONSOLE_UNIT, present: bool = True):
    """
    Blank the text console (and power the panel down, VESA) after some idle minutes, now and at every boot,
    so an open laptop's screen is not lit day and night. The boot-time unit runs again only when the kernel's
    blanking interval differs. A host without a virtual console (a container) gets the unit, which then
    waits for a console.

    + minutes: idle minutes before the console blanks, 0-60 (0: never)
    + unit: the systemd unit file
    + present: ``False`` disables and removes the unit

    **Example:**

    .. code:: python

        hardware.console_blanking(name="Blank the idle console", minutes=1)
    """
    low, high = CONSOLE_BLANK_MINUTES_RANGE
    if not (_is_int(minutes) and low <= minutes <= high):
        raise OperationValueError(f"minutes: {minutes!r} (expected an integer {low}-{high}, 0 = never blank)")
    unit_info = host.get_fact(ManagedUnit, path=unit)
    name = os.path.basename(unit)
    if not present:
        yield from _removed_unit(unit, unit_info)
        return
    console = host.get_fact(Console)
    content = render("node_baseline/console-blank.service.j2", minutes=minutes)
    commands = _unit_steps(content, unit, unit_info)
    if console["vt"] and console["blank_sec"] != minutes * 60:
        commands.append(StringCommand("systemctl restart", QuoteString(name)))
    if not commands:
        if console["vt"]:
            host.noop(f"the console blanks after {minutes} minute(s)" if minutes else "the console never blanks")
        else:
            host.noop(f"{name} is enabled; this host has no virtual console (/dev/tty1), so there is nothing to blank")
        return
    yield from commands


# Every node
#


@host_operation(changes=(Watchdog, FileStates))
def watchdog(runtime_sec: int = 15, path: str = WATCHDOG_DROPIN, present: bool = True):
    """
    Let systemd feed the hardware watchdog (``RuntimeWatchdogSec``), so a hung host is reset by it. The
    drop-in is applied with ``systemctl daemon-reexec``, only when it changed or the running manager still
    uses another value. Without a watchdog device (a container, a VM without one) the setting is written
    and loaded but there is nothing to arm; the operation says so.

    + runtime_sec: seconds without a ping before the watchdog resets the host, 5-600 (0: off); systemd pings
      at half of it. Some watchdogs allow less (a Raspberry Pi's at most 15).
    + path: the ``system.conf.d`` drop-in
    + present: ``False`` removes the drop-in again (systemd is re-executed, with its default: off)

    **Example:**

    .. code:: python

        hardware.watchdog(name="Arm the systemd watchdog", runtime_sec=15)
    """
    low, high = WATCHDOG_SEC_RANGE
    if not (_is_int(runtime_sec) and (runtime_sec == 0 or low <= runtime_sec <= high)):
        raise OperationValueError(f"runtime_sec: {runtime_sec!r} (expected 0 (off) or {low}-{high} seconds)")
    info = shared_fact(host, Watchdog)
    current = file_checksum(host, path)
    if not present:
        if current is None:
            host.noop("the watchdog drop-in is absent")
            return
        yield StringCommand("rm -f", QuoteString(path))
        yield "systemctl daemon-reexec"
        return
    content = render("node_baseline/watchdog.conf.j2", runtime_sec=runtime_sec)
    changed = current != sha256(content)
    if changed:
        yield from _upload(content, path)
    if changed or info["runtime_watchdog_sec"] != runtime_sec:
        yield "systemctl daemon-reexec"
        return
    if not runtime_sec:
        host.noop("the runtime watchdog is off")
    elif info["devices"]:
        host.noop(f"systemd feeds the watchdog every {runtime_sec / 2:g}s ({', '.join(info['devices'])})")
    elif info["container"]:
        host.noop(
            f"RuntimeWatchdogSec={runtime_sec}s is loaded; this host is a container ({info['container']}) "
            "without a watchdog device, so nothing is armed here (watchdogs are the container host's)"
        )
    else:
        host.noop(
            f"RuntimeWatchdogSec={runtime_sec}s is loaded, but this host has no watchdog device "
            "(/sys/class/watchdog): load its driver (e.g. iTCO_wdt, sp5100_tco, bcm2835_wdt)"
        )


@host_operation(changes=(PanicSysctl, FileStates))
def panic_reboot(reboot_sec: int = 10, on_oops: bool = True, path: str = PANIC_SYSCTL, present: bool = True):
    """
    Reboot after a kernel panic instead of hanging (``kernel.panic``), and panic on an oops
    (``kernel.panic_on_oops``). The ``sysctl.d`` file applies at every boot; the running kernel is set with
    ``sysctl -p`` when the file changed or its values differ. In a container ``/proc/sys`` is read-only and
    these settings are the container host's (they are not namespaced): the file is written for when the
    host boots as a real machine, and the operation says why nothing is applied.

    + reboot_sec: seconds between a panic and the reboot, 0-3600 (0: stay halted)
    + on_oops: make an oops a panic (and so a reboot)
    + path: the ``sysctl.d`` file
    + present: ``False`` removes the file and, where ``/proc/sys`` is writable, sets the kernel's defaults
      again (``kernel.panic = 0``, ``kernel.panic_on_oops = 0``)

    **Example:**

    .. code:: python

        hardware.panic_reboot(name="Reboot after a kernel panic", reboot_sec=10)
    """
    low, high = PANIC_REBOOT_SEC_RANGE
    if not (_is_int(reboot_sec) and low <= reboot_sec <= high):
        raise OperationValueError(f"reboot_sec: {reboot_sec!r} (expected an integer {low}-{high}, 0 = never)")
    if not isinstance(on_oops, bool):
        raise OperationValueError(f"on_oops: {on_oops!r} (expected True or False)")
    info = shared_fact(host, PanicSysctl)
    current = file_checksum(host, path)
    if not present:
        if current is None:
            host.noop(f"{path} is absent")
            return
        yield StringCommand("rm -f", QuoteString(path))
        if info["writable"]:
            yield "sysctl -q -w kernel.panic=0 kernel.panic_on_oops=0"
        return
    content = render("node_baseline/panic-sysctl.conf.j2", reboot_sec=reboot_sec, on_oops=on_oops)
    changed = current != sha256(content)
    if changed:
        yield from _upload(content, path)
    differs = (info["panic"], info["panic_on_oops"]) != (reboot_sec, int(on_oops))
    if info["writable"]:
        if changed or differs:
            yield StringCommand("sysctl -q -p", QuoteString(path))
            return
        host.noop(f"kernel.panic = {reboot_sec}, kernel.panic_on_oops = {int(on_oops)}")
        return
    if not changed:
        where = f"this host is a container ({info['container']})" if info["container"] else "/proc/sys is read-only"
        host.noop(
            f"{path} is in place; {where}: kernel.panic is not namespaced and /proc/sys cannot be written here, "
            f"so the running kernel keeps kernel.panic = {info['panic']} (the file applies when the host boots)"
        )
