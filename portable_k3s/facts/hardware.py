"""Facts about a node's hardware: firmware (DMI, coreboot, Intel ME), batteries, lid switch and logind,
console, watchdog and kernel panic settings. Each is one remote command, read-only and safe on any host:
a VM or container has little or no DMI, no battery and no lid, and every field then says so (``None``,
``False`` or an empty list) instead of failing.
"""

from __future__ import annotations

import re
from typing import TypedDict

from pyinfra.api import FactBase, QuoteString, StringCommand

from .util import (
    MANAGER,
    checksum,
    container_of,
    first_lines,
    manager_property,
    next_section,
    sections,
    sha256_of,
    shared_value,
)

DMI_DIR = "/sys/class/dmi/id"
DMI_FIELDS = (
    "bios_vendor",
    "bios_version",
    "bios_date",
    "sys_vendor",
    "product_name",
    "product_version",
    "board_vendor",
    "board_name",
    "chassis_type",
)

# SMBIOS system enclosure types (SMBIOS 3.x, table "System Enclosure or Chassis Types").
CHASSIS_TYPES: dict[int, str] = {
    1: "Other", 2: "Unknown", 3: "Desktop", 4: "Low Profile Desktop", 5: "Pizza Box", 6: "Mini Tower",
    7: "Tower", 8: "Portable", 9: "Laptop", 10: "Notebook", 11: "Hand Held", 12: "Docking Station",
    13: "All in One", 14: "Sub Notebook", 15: "Space-saving", 16: "Lunch Box", 17: "Main Server Chassis",
    18: "Expansion Chassis", 19: "SubChassis", 20: "Bus Expansion Chassis", 21: "Peripheral Chassis",
    22: "RAID Chassis", 23: "Rack Mount Chassis", 24: "Sealed-case PC", 25: "Multi-system chassis",
    26: "Compact PCI", 27: "Advanced TCA", 28: "Blade", 29: "Blade Enclosure", 30: "Tablet",
    31: "Convertible", 32: "Detachable", 33: "IoT Gateway", 34: "Embedded PC", 35: "Mini PC", 36: "Stick PC",
}
PORTABLE_CHASSIS = frozenset({8, 9, 10, 14, 30, 31, 32})

# Intel ME host firmware status register 1 (HFSTS1, PCI config offset 0x40 of the MEI function).
ME_WORKING_STATES = (
    "reset", "initializing", "recovery", "test", "disabled", "normal", "disable-wait", "transition", "invalid-cpu",
)
ME_OPERATION_MODES = {
    0: "normal", 2: "debug", 3: "soft-temporary-disable", 4: "security-override-jumper",
    5: "security-override-mei", 7: "sps",
}
ME_ERROR_CODES = {0: "none", 1: "uncategorized", 2: "disabled", 3: "image-failure", 4: "debug-failure"}
X86_ARCHES = frozenset({"x86_64", "i386", "i486", "i586", "i686"})

# The logind settings a laptop-as-server changes, in the order they are read from logind over D-Bus.
LOGIND_KEYS = (
    "HandleLidSwitch",
    "HandleLidSwitchExternalPower",
    "HandleLidSwitchDocked",
    "HandleSuspendKey",
    "HandleHibernateKey",
    "IdleAction",
)
SLEEP_TARGETS = (
    "sleep.target",
    "suspend.target",
    "hibernate.target",
    "hybrid-sleep.target",
    "suspend-then-hibernate.target",
)

_KEY_VALUE_RE = re.compile(r"^([A-Za-z0-9_]+)=(.*)$")


def _key_values(output: list[str]) -> dict[str, list[str]]:
    """``key=value`` lines into ``{key: [values, in order]}`` (other lines are skipped)."""
    found: dict[str, list[str]] = {}
    for line in output:
        match = _KEY_VALUE_RE.match(line.strip())
        if match:
            found.setdefault(match.group(1), []).append(match.group(2).strip())
    return found


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if re.fullmatch(r"-?\d+", value) else None


def _virt(value: str) -> str | None:
    """A ``systemd-detect-virt`` answer: ``None`` for none (or no answer)."""
    value = value.strip()
    return None if value in ("", "none") else value


# Firmware
#


class MeInfo(TypedDict):
    status: str
    reason: str
    pci: list[str]
    devices: list[str]
    hfsts1: str | None
    working_state: str | None
    operation_mode: str | None
    error_code: str | None
    manufacturing_mode: bool | None
    firmware_version: str | None


class FirmwareInfo(TypedDict):
    arch: str | None
    vm: str | None
    container: str | None
    dmi: bool
    bios_vendor: str | None
    bios_version: str | None
    bios_date: str | None
    sys_vendor: str | None
    product_name: str | None
    product_version: str | None
    board_vendor: str | None
    board_name: str | None
    chassis: str | None
    portable_chassis: bool
    coreboot: bool | None
    coreboot_evidence: list[str]
    coreboot_version: str | None
    coreboot_version_prefix: str | None
    me: MeInfo


class Hfsts1(TypedDict):
    working_state: str
    operation_mode: str
    error_code: str
    manufacturing_mode: bool


def decode_hfsts1(value: int) -> Hfsts1:
    """Decode an Intel ME HFSTS1 register: working state [3:0], manufacturing mode [4], error code [15:12],
    operation mode [19:16]."""
    state = value & 0xF
    mode = (value >> 16) & 0xF
    error = (value >> 12) & 0xF
    return {
        "working_state": ME_WORKING_STATES[state] if state < len(ME_WORKING_STATES) else f"unknown-{state}",
        "operation_mode": ME_OPERATION_MODES.get(mode, f"unknown-{mode}"),
        "error_code": ME_ERROR_CODES.get(error, f"unknown-{error}"),
        "manufacturing_mode": bool(value & 0x10),
    }


def _register(entries: list[str]) -> str | None:
    """The first ``<device> <8 hex digits>`` entry's register, lower-case."""
    for entry in entries:
        register = entry.partition(" ")[2].strip()
        if re.fullmatch(r"[0-9a-fA-F]{8}", register):
            return register.lower()
    return None


def _me_status(
    arch: str | None, vm: str | None, where: str, decoded: Hfsts1 | None, pci_devices: int
) -> tuple[str, str]:
    """``(status, reason)`` for the Intel ME, see ``Firmware``."""
    if arch and arch not in X86_ARCHES:
        return "absent", f"not an Intel x86 machine ({arch}): there is no Intel ME"
    if decoded is not None:
        state, mode, error = decoded["working_state"], decoded["operation_mode"], decoded["error_code"]
        described = f"MEI {where}: working state {state}, operation mode {mode}, error {error}"
        if mode == "soft-temporary-disable" or state == "disabled":
            return "disabled", f"the ME firmware reports it is disabled ({described})"
        if state == "normal" and error == "none":
            return "running", f"the ME firmware is running ({described})"
        return "not-running", f"the ME firmware is not running normally, as me_cleaner leaves it ({described})"
    if where:
        return "unknown", (
            f"an MEI device is visible ({where}) but its firmware status cannot be read "
            "(deploy as root to read the PCI config space)"
        )
    if vm:
        return "unknown", f"no MEI device in this virtual machine ({vm}): the real machine's ME is not visible"
    if not pci_devices:
        return "unknown", "no PCI devices are visible here, so the ME cannot be seen"
    return "absent", "no Intel MEI device on the PCI bus: the firmware hides or disables the ME"


def _me_info(values: dict[str, list[str]], arch: str | None, vm: str | None) -> MeInfo:
    pci = values.get("mei_pci", [])
    devices = values.get("mei_dev", [])
    hfsts1 = _register(values.get("mei_hfsts1", [])) or _register(values.get("mei_fw_status", []))
    versions = [entry.partition(" ")[2].strip() for entry in values.get("mei_fw_ver", [])]
    decoded = decode_hfsts1(int(hfsts1, 16)) if hfsts1 is not None else None
    where = ", ".join(p.split(" ", 1)[0] for p in pci) or ", ".join(devices)
    status, reason = _me_status(arch, vm, where, decoded, _int((values.get("pci_devices") or ["0"])[-1]) or 0)
    return {
        "status": status,
        "reason": reason,
        "pci": pci,
        "devices": devices,
        "hfsts1": hfsts1,
        "working_state": decoded["working_state"] if decoded else None,
        "operation_mode": decoded["operation_mode"] if decoded else None,
        "error_code": decoded["error_code"] if decoded else None,
        "manufacturing_mode": decoded["manufacturing_mode"] if decoded else None,
        "firmware_version": versions[0].split(":", 1)[-1] if versions and versions[0] else None,
    }


class Firmware(FactBase[FirmwareInfo]):
    """
    Returns what the firmware tells about a host, in one command: architecture and virtualisation
    (``systemd-detect-virt``); the DMI strings from ``/sys/class/dmi/id`` (BIOS vendor, version, date;
    system vendor, product name and version; board; chassis type); whether it runs coreboot (the SMBIOS
    BIOS vendor ``coreboot``, the ACPI device coreboot registers, ``BOOT0000``, a ``firmware/coreboot``
    devicetree node, or devices on the ``coreboot`` bus) with its version (Lenovo boards prefix it with
    ``CBETxxxx`` for thinkpad_acpi); and the Intel ME: the MEI PCI function (Intel, class ``0x0780``),
    ``/dev/mei*``, and its state decoded from HFSTS1 (PCI config offset 0x40; readable by root, else from
    ``/sys/class/mei/*/fw_status``).

    ``coreboot`` is ``None`` when nothing can tell (no DMI and no coreboot device). ``me.status`` is
    ``absent`` (no MEI device on real x86 hardware, or not x86), ``disabled`` (firmware reports Disabled or
    Soft Temporary Disable), ``not-running`` (recovery or an error, the state me_cleaner leaves),
    ``running`` or ``unknown`` (VM, or status unreadable); ``me.reason`` says why.

    .. code:: python

        {"arch": "x86_64", "vm": None, "container": None, "dmi": True, "bios_vendor": "coreboot",
         "bios_version": "CBET4000 4.9-2176-g2195f7af23", "product_version": "ThinkPad T420", ...,
         "coreboot": True, "coreboot_evidence": ["smbios", "acpi:BOOT0000:00"],
         "coreboot_version": "4.9-2176-g2195f7af23", "coreboot_version_prefix": "CBET4000",
         "me": {"status": "not-running", "reason": "…", "pci": ["0000:00:16.0 0x1c3a -"], ...}}
    """

    @staticmethod
    def default() -> FirmwareInfo:  # no output at all: nothing could be read
        return Firmware().process([])

    def command(self) -> StringCommand:
        fields = " ".join(DMI_FIELDS)
        return StringCommand(
            'echo "arch=$(uname -m)";',
            'echo "vm=$(systemd-detect-virt --vm 2>/dev/null)";',
            'echo "container=$(systemd-detect-virt --container 2>/dev/null)";',
            f"d={DMI_DIR}; [ -d $d ] && echo dmi=yes;",
            f'for f in {fields}; do [ -r "$d/$f" ] && echo "$f=$(head -n 1 "$d/$f")"; done;',
            'for a in /sys/bus/acpi/devices/BOOT0000:*; do [ -e "$a" ] && echo "coreboot_acpi=${a##*/}"; done;',
            "[ -d /sys/firmware/devicetree/base/firmware/coreboot ] && echo coreboot_dt=yes;",
            'for c in /sys/bus/coreboot/devices/*; do [ -e "$c" ] && echo "coreboot_bus=${c##*/}"; done;',
            'n=0; for p in /sys/bus/pci/devices/*; do [ -r "$p/class" ] || continue; n=$((n+1));',
            'case "$(cat "$p/class")" in 0x0780*) [ "$(cat "$p/vendor")" = 0x8086 ] || continue;',
            'drv=-; [ -e "$p/driver" ] && drv=$(basename "$(readlink "$p/driver")");',
            'echo "mei_pci=${p##*/} $(cat "$p/device") $drv";',
            'echo "mei_hfsts1=${p##*/} $(od -An -tx4 -j64 -N4 "$p/config" 2>/dev/null | tr -d \' \')";;',
            'esac; done; echo "pci_devices=$n";',
            'for m in /sys/class/mei/mei*; do [ -e "$m" ] || continue;',
            'echo "mei_fw_status=${m##*/} $(head -n 1 "$m/fw_status" 2>/dev/null)";',
            'echo "mei_fw_ver=${m##*/} $(head -n 1 "$m/fw_ver" 2>/dev/null)"; done;',
            'for x in /dev/mei*; do [ -e "$x" ] && echo "mei_dev=$x"; done; true',
        )

    def process(self, output: list[str]) -> FirmwareInfo:
        values = _key_values(output)

        def one(key: str) -> str | None:
            found = values.get(key)
            return found[-1] if found and found[-1] else None

        arch, vm, container = one("arch"), _virt(one("vm") or ""), _virt(one("container") or "")
        chassis_type = _int(one("chassis_type"))
        bios_vendor, bios_version = one("bios_vendor"), one("bios_version")

        evidence: list[str] = []
        if bios_vendor and bios_vendor.lower() == "coreboot":
            evidence.append("smbios")
        evidence += [f"acpi:{name}" for name in values.get("coreboot_acpi", [])]
        if one("coreboot_dt"):
            evidence.append("devicetree")
        if values.get("coreboot_bus"):
            evidence.append("coreboot-bus")
        coreboot: bool | None = True if evidence else (False if one("dmi") and bios_vendor else None)

        prefix: str | None = None
        version: str | None = None
        if coreboot and bios_version:
            match = re.match(r"^(CBET[0-9A-Z]{4})\s+(.*)$", bios_version)
            prefix, version = (match.group(1), match.group(2) or None) if match else (None, bios_version)

        return {
            "arch": arch,
            "vm": vm,
            "container": container,
            "dmi": one("dmi") == "yes",
            "bios_vendor": bios_vendor,
            "bios_version": bios_version,
            "bios_date": one("bios_date"),
            "sys_vendor": one("sys_vendor"),
            "product_name": one("product_name"),
            "product_version": one("product_version"),
            "board_vendor": one("board_vendor"),
            "board_name": one("board_name"),
            "chassis": CHASSIS_TYPES.get(chassis_type, str(chassis_type)) if chassis_type is not None else None,
            "portable_chassis": chassis_type in PORTABLE_CHASSIS,
            "coreboot": coreboot,
            "coreboot_evidence": evidence,
            "coreboot_version": version,
            "coreboot_version_prefix": prefix,
            "me": _me_info(values, arch, vm),
        }


# Batteries
#

BATTERY_ATTRIBUTES = (
    "type",
    "scope",
    "online",
    "present",
    "status",
    "capacity",
    "manufacturer",
    "model_name",
    "energy_full",
    "energy_full_design",
    "charge_full",
    "charge_full_design",
    "charge_control_start_threshold",
    "charge_control_end_threshold",
)


class BatteryState(TypedDict):
    name: str
    present: bool
    status: str | None
    capacity: int | None
    manufacturer: str | None
    model: str | None
    health: int | None
    start_threshold: int | None
    stop_threshold: int | None
    thresholds: bool


class BatteryInfo(TypedDict):
    thinkpad_acpi: bool
    ac_online: bool | None
    batteries: list[BatteryState]


class Battery(FactBase[BatteryInfo]):
    """
    Returns the host's batteries (``/sys/class/power_supply``, system batteries only: a wireless mouse's
    is skipped) and whether mains power is online (``None`` without a mains supply). For each battery: its
    state, health (full charge as a percentage of the design capacity) and its charge thresholds, with
    ``thresholds`` true when both ``charge_control_start_threshold`` and ``charge_control_end_threshold``
    exist and are writable (thinkpad_acpi offers them where the firmware supports it). ``thinkpad_acpi``
    says whether that driver is loaded.

    .. code:: python

        {"thinkpad_acpi": True, "ac_online": True,
         "batteries": [{"name": "BAT0", "present": True, "status": "Not charging", "capacity": 79,
                        "manufacturer": "SANYO", "model": "45N1001", "health": 71,
                        "start_threshold": 40, "stop_threshold": 80, "thresholds": True}]}
    """

    @staticmethod
    def default() -> BatteryInfo:
        return {"thinkpad_acpi": False, "ac_online": None, "batteries": []}

    def command(self) -> StringCommand:
        attributes = " ".join(BATTERY_ATTRIBUTES)
        return StringCommand(
            'for p in /sys/class/power_supply/*; do [ -r "$p/type" ] || continue; n=${p##*/};',
            f'for a in {attributes}; do [ -r "$p/$a" ] && echo "$n $a=$(head -n 1 "$p/$a" 2>/dev/null)"; done;',
            '[ -w "$p/charge_control_start_threshold" ] && [ -w "$p/charge_control_end_threshold" ]',
            '&& echo "$n thresholds=writable"; done;',
            "[ -d /sys/devices/platform/thinkpad_acpi ] && echo thinkpad_acpi=yes; true",
        )

    def process(self, output: list[str]) -> BatteryInfo:
        supplies: dict[str, dict[str, str]] = {}
        thinkpad_acpi = False
        for line in output:
            line = line.strip()
            if line == "thinkpad_acpi=yes":
                thinkpad_acpi = True
                continue
            name, _, rest = line.partition(" ")
            key, sep, value = rest.partition("=")
            if name and sep:
                supplies.setdefault(name, {})[key] = value.strip()

        ac_online: bool | None = None
        batteries: list[BatteryState] = []
        for name, attrs in supplies.items():
            kind = attrs.get("type")
            if kind == "Mains":
                ac_online = bool(ac_online) or attrs.get("online") == "1"
            if kind != "Battery" or attrs.get("scope") == "Device":
                continue
            full = _int(attrs.get("energy_full")) or _int(attrs.get("charge_full"))
            design = _int(attrs.get("energy_full_design")) or _int(attrs.get("charge_full_design"))
            batteries.append({
                "name": name,
                "present": attrs.get("present", "1") == "1",
                "status": attrs.get("status") or None,
                "capacity": _int(attrs.get("capacity")),
                "manufacturer": attrs.get("manufacturer") or None,
                "model": attrs.get("model_name") or None,
                "health": round(100 * full / design) if full and design else None,
                "start_threshold": _int(attrs.get("charge_control_start_threshold")),
                "stop_threshold": _int(attrs.get("charge_control_end_threshold")),
                "thresholds": attrs.get("thresholds") == "writable",
            })
        return {"thinkpad_acpi": thinkpad_acpi, "ac_online": ac_online, "batteries": batteries}


# Lid switch and logind
#


class LidSwitchInfo(TypedDict):
    dropin_sha256: str | None
    lid: bool
    lid_state: str | None
    logind_active: bool
    in_effect: dict[str, str]
    configured: dict[str, str]


class LidSwitch(FactBase[LidSwitchInfo]):
    """
    Returns the lid switch and the logind settings for it, in one command: the checksum of our logind
    drop-in (``None`` when absent); whether the host has a lid (ACPI ``/proc/acpi/button/lid`` or an input
    device named "Lid Switch") and its state; whether systemd-logind runs; the settings logind has in
    effect (read from the running logind over D-Bus; empty when it is not reachable); and the settings
    its config files give (``systemd-analyze cat-config``, the last value of each key wins; only keys set
    in a file). The keys are ``LOGIND_KEYS``.

    .. code:: python

        {"dropin_sha256": "0c1d…", "lid": True, "lid_state": "open", "logind_active": True,
         "in_effect": {"HandleLidSwitch": "ignore", "HandleLidSwitchExternalPower": "ignore", ...},
         "configured": {"HandleLidSwitch": "ignore", ...}}
    """

    @staticmethod
    def default() -> LidSwitchInfo:
        return {"dropin_sha256": None, "lid": False, "lid_state": None, "logind_active": False,
                "in_effect": {}, "configured": {}}

    def command(self, path: str) -> StringCommand:
        return StringCommand(
            sha256_of(path),
            next_section(),
            "for s in /proc/acpi/button/lid/*/state; do [ -r \"$s\" ] && sed -n 's/^state:[[:space:]]*//p' \"$s\";",
            "done;",
            next_section(),
            "grep -lx 'Lid Switch' /sys/class/input/input*/name 2>/dev/null | cut -d/ -f5;",
            next_section(),
            "systemctl is-active systemd-logind.service 2>/dev/null || true;",
            next_section(),
            "busctl get-property org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager",
            " ".join(LOGIND_KEYS),
            "2>/dev/null;",
            next_section(),
            "systemd-analyze cat-config systemd/logind.conf 2>/dev/null | grep -E '^[[:space:]]*(\\[|[A-Za-z]+=)';",
            "true",
        )

    def process(self, output: list[str]) -> LidSwitchInfo:
        sha, lid_states, lid_inputs, active, properties, config = sections(output, 6)
        in_effect: dict[str, str] = {}
        values = [re.match(r'^s\s+"(.*)"$', line) for line in properties if line]
        if len(values) == len(LOGIND_KEYS) and all(values):
            in_effect = {key: match.group(1) for key, match in zip(LOGIND_KEYS, values, strict=True) if match}
        configured: dict[str, str] = {}
        section = ""
        for line in config:
            if line.startswith("["):
                section = line.strip("[] ")
                continue
            key, _, value = line.partition("=")
            if section == "Login" and key.strip() in LOGIND_KEYS:
                configured[key.strip()] = value.strip()
        return {
            "dropin_sha256": checksum(sha[0] if sha else ""),
            "lid": bool(lid_states or lid_inputs),
            "lid_state": lid_states[0] if lid_states else None,
            "logind_active": (active[0] if active else "") == "active",
            "in_effect": in_effect,
            "configured": configured,
        }


# Sleep targets
#


class SleepTargets(FactBase[dict[str, str]]):
    """
    Returns the load state of each systemd sleep target (``SLEEP_TARGETS``): ``masked`` when it can never
    be reached, ``loaded``, or ``not-found`` (an older systemd without that target).

    .. code:: python

        {"sleep.target": "masked", "suspend.target": "masked", "hibernate.target": "loaded", ...}
    """

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def command(self) -> str:
        return f"systemctl show -p Id -p LoadState {' '.join(SLEEP_TARGETS)} 2>/dev/null; true"

    def process(self, output: list[str]) -> dict[str, str]:
        states: dict[str, str] = {}
        unit = ""
        for line in output:
            key, _, value = line.strip().partition("=")
            if key == "Id":
                unit = value
            elif key == "LoadState" and unit:
                states[unit] = value
        return states


# Console
#


class ConsoleInfo(TypedDict):
    vt: bool
    blank_sec: int | None


class Console(FactBase[ConsoleInfo]):
    """
    Returns whether the host has a virtual console (``/dev/tty1``; a container has none) and the kernel's
    console blanking interval in seconds (``/sys/module/kernel/parameters/consoleblank``, 0 = never;
    ``None`` when it cannot be read).

    .. code:: python

        {"vt": True, "blank_sec": 60}
    """

    @staticmethod
    def default() -> ConsoleInfo:
        return {"vt": False, "blank_sec": None}

    def command(self) -> str:
        return (
            "[ -e /dev/tty1 ] && echo vt=yes; b=/sys/module/kernel/parameters/consoleblank;"
            ' [ -r $b ] && echo "blank=$(cat $b)"; true'
        )

    def process(self, output: list[str]) -> ConsoleInfo:
        values = _key_values(output)
        return {"vt": values.get("vt") == ["yes"], "blank_sec": _int((values.get("blank") or [""])[-1])}


# A unit file we manage
#


class ManagedUnitInfo(TypedDict):
    sha256: str | None
    enabled: bool
    active: bool


class ManagedUnit(FactBase[ManagedUnitInfo]):
    """
    Returns the state of a systemd unit file this library writes: its checksum (``None`` when absent) and
    whether the unit is enabled and active. The unit is named after the file.

    .. code:: python

        {"sha256": "5d2c…", "enabled": True, "active": True}
    """

    @staticmethod
    def default() -> ManagedUnitInfo:
        return {"sha256": None, "enabled": False, "active": False}

    def command(self, path: str) -> StringCommand:
        unit = QuoteString(path.rsplit("/", 1)[-1])
        return StringCommand(
            sha256_of(path),
            next_section(),
            "systemctl is-enabled", unit, "2>/dev/null || true;",
            next_section(),
            "systemctl is-active", unit, "2>/dev/null || true",
        )

    def process(self, output: list[str]) -> ManagedUnitInfo:
        sha, enabled, active = first_lines(output, 3)
        return {"sha256": checksum(sha), "enabled": enabled == "enabled", "active": active == "active"}


# Watchdog
#

_TIMESPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def timespan_seconds(text: str) -> int | None:
    """A systemd timespan as ``systemctl show`` prints it (``0``, ``15s``, ``1min 30s``) in whole seconds;
    ``None`` for anything else (``infinity``, garbage, nothing)."""
    text = text.strip()
    if text == "0":
        return 0
    parts = re.findall(r"(\d+)(us|ms|s|min|h|d|w)\s*", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        return None
    return round(sum(int(number) * _TIMESPAN_UNITS[unit] for number, unit in parts))


class WatchdogInfo(TypedDict):
    container: str | None
    runtime_watchdog_sec: int | None
    devices: list[str]


class Watchdog(FactBase[WatchdogInfo]):
    """
    Returns the systemd watchdog setup: the container type when the host is one, the ``RuntimeWatchdogSec`` the
    running systemd manager uses (seconds; ``None`` when unreadable), and the hardware watchdog devices with
    their driver. (The drop-in's checksum is ``files.FileStates``': one ``sha256sum`` with the other files'.)

    .. code:: python

        {"container": None, "runtime_watchdog_sec": 15, "devices": ["watchdog0 iTCO_wdt"]}
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    shared_values = (MANAGER,)  # one systemctl show per prefetch: the container type and the watchdog

    @staticmethod
    def default() -> WatchdogInfo:
        return {"container": None, "runtime_watchdog_sec": None, "devices": []}

    def command(self) -> StringCommand:
        return StringCommand(
            shared_value(MANAGER),
            next_section(),
            'for w in /sys/class/watchdog/watchdog*; do [ -e "$w" ] &&',
            'echo "${w##*/} $(cat "$w/identity" 2>/dev/null)"; done; true',
        )

    def process(self, output: list[str]) -> WatchdogInfo:
        manager, devices = sections(output, 2)
        runtime = manager_property(manager, "RuntimeWatchdogUSec")
        return {
            "container": container_of(manager),
            "runtime_watchdog_sec": timespan_seconds(runtime) if runtime else None,
            "devices": [line for line in devices if line],
        }


# Kernel panic
#


class PanicSysctlInfo(TypedDict):
    container: str | None
    panic: int | None
    panic_on_oops: int | None
    writable: bool


class PanicSysctl(FactBase[PanicSysctlInfo]):
    """
    Returns the kernel panic settings: the container type when the host is one, the running ``kernel.panic``
    (seconds before rebooting after a panic, 0 = never) and ``kernel.panic_on_oops``, and whether ``/proc/sys``
    can be written (it cannot in a container: these settings are not namespaced, they belong to the container
    host). (The ``sysctl.d`` file's checksum is ``files.FileStates``'.)

    .. code:: python

        {"container": None, "panic": 10, "panic_on_oops": 1, "writable": True}
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    shared_values = (MANAGER,)  # one systemctl show per prefetch, for the container type

    @staticmethod
    def default() -> PanicSysctlInfo:
        return {"container": None, "panic": None, "panic_on_oops": None, "writable": False}

    def command(self) -> StringCommand:
        return StringCommand(
            # read, not cat: no program run (its status is 1 on /proc files, which end at EOF for it)
            "v=; read -r v 2>/dev/null </proc/sys/kernel/panic; echo \"$v\";",
            next_section(),
            "v=; read -r v 2>/dev/null </proc/sys/kernel/panic_on_oops; echo \"$v\";",
            next_section(),
            "[ -w /proc/sys/kernel/panic ] && echo yes || echo no;",
            next_section(),
            shared_value(MANAGER),
        )

    def process(self, output: list[str]) -> PanicSysctlInfo:
        panic, on_oops, writable = first_lines(output, 3)
        return {
            "container": container_of(sections(output, 4)[3]),
            "panic": _int(panic),
            "panic_on_oops": _int(on_oops),
            "writable": writable == "yes",
        }
