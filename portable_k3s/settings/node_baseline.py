"""Settings of the node baseline: firmware checks, laptops as servers, watchdog and kernel panics."""

from __future__ import annotations

from typing import Any

from .core import Check, Setting, boolean, custom, int_range_problems, integer, show, wrong_type

# Firmware policy: each check is off, warn (report and carry on) or fail (stop the host).
POLICY_LEVELS = ("off", "warn", "fail")
FIRMWARE_CHECKS = ("require_coreboot", "require_me_disabled")

# Accepted ranges (the operations check their arguments against the same limits).
WATCHDOG_SEC_RANGE = (5, 600)  # or 0: off
PANIC_REBOOT_SEC_RANGE = (0, 3600)  # 0: stay halted after a panic
CONSOLE_BLANK_MINUTES_RANGE = (0, 60)  # 0: never blank; setterm takes at most 60
BATTERY_THRESHOLD_RANGE = (1, 100)  # start < stop

_POLICY_LEVELS = ", ".join(map(repr, POLICY_LEVELS[:-1])) + f" or {POLICY_LEVELS[-1]!r}"
_THRESHOLDS_EXAMPLE = '{"start": 40, "stop": 80}'
NODES = "k3s nodes, exit nodes"


def _check_firmware_policy(value: Any) -> Check:
    if not isinstance(value, dict):
        example = ", ".join(f'"{check}": "warn"' for check in FIRMWARE_CHECKS)
        return [(wrong_type(value), f"a dict like {{{example}}}")]
    found: Check = []
    for check, level in value.items():
        if check not in FIRMWARE_CHECKS:
            found.append((f".{check}", "is not a firmware check", " or ".join(FIRMWARE_CHECKS)))
        elif not isinstance(level, str) or level not in POLICY_LEVELS:
            found.append((f".{check}", f"{show(level)} is not a policy level", _POLICY_LEVELS))
    return found


def _check_battery_thresholds(value: Any) -> Check:
    low, high = BATTERY_THRESHOLD_RANGE
    expected = f"percentages with {low - 1} < start < stop <= {high}, like {_THRESHOLDS_EXAMPLE}"
    if value is None:
        return []
    if not isinstance(value, dict):
        return [(wrong_type(value), f"a dict like {_THRESHOLDS_EXAMPLE}, or None to leave them alone")]
    found: Check = [(f".{key}", "is not a threshold", "start and stop") for key in value if key not in
                    ("start", "stop")]
    for key in ("start", "stop"):
        if key not in value:
            found.append((f".{key}", "is missing", expected))
        else:
            found += [(f".{key}", problem, wanted) for problem, wanted in
                      int_range_problems(value[key], low, high, expected)]
    if not found and value["start"] >= value["stop"]:
        found.append((f"start {value['start']} is not below stop {value['stop']}", expected))
    return found


_LEVEL_SCHEMA = {"enum": list(POLICY_LEVELS)}
_PERCENT_SCHEMA = {"type": "integer", "minimum": BATTERY_THRESHOLD_RANGE[0], "maximum": BATTERY_THRESHOLD_RANGE[1]}

SETTINGS: tuple[Setting, ...] = (
    Setting("firmware_policy", custom(_check_firmware_policy, {
        "type": "object", "properties": {check: _LEVEL_SCHEMA for check in FIRMWARE_CHECKS},
        "additionalProperties": False}),
        "firmware checks, each `off`, `warn` or `fail` (see the node baseline); a host's dict replaces its "
        "group's, and a check it leaves out is `off`",
        {"require_coreboot": "off", "require_me_disabled": "off"}, read_on=NODES),
    Setting("laptop", boolean(), "the machine is a laptop that runs as a server (lid, sleep, battery, console)",
            False, read_on=NODES),
    Setting("battery_charge_thresholds", custom(_check_battery_thresholds, {"anyOf": [
        {"type": "object", "properties": {"start": _PERCENT_SCHEMA, "stop": _PERCENT_SCHEMA},
         "required": ["start", "stop"], "additionalProperties": False}, {"type": "null"}]}),
        "laptops: keep the batteries between these percentages where supported; `None` leaves them alone",
        {"start": 40, "stop": 80}, read_on=NODES),
    Setting("console_blank_minutes", integer(*CONSOLE_BLANK_MINUTES_RANGE, "whole minutes {}-{} (0: never blank)"
                                             .format(*CONSOLE_BLANK_MINUTES_RANGE)),
            "laptops: blank the idle text console and power the panel down after this many minutes (0: never)", 1,
            read_on=NODES),
    Setting("watchdog_sec", integer(*WATCHDOG_SEC_RANGE, "0 (off) or {}-{} seconds".format(*WATCHDOG_SEC_RANGE),
                                    or_zero=True),
            "systemd's `RuntimeWatchdogSec`, 5-600 (0: off)", 15, read_on=NODES),
    Setting("kernel_panic_reboot_sec", integer(*PANIC_REBOOT_SEC_RANGE, "seconds {}-{} (0: stay halted after a "
                                               "panic)".format(*PANIC_REBOOT_SEC_RANGE)),
            "reboot this many seconds after a kernel panic, 0-3600 (0: stay halted)", 10, read_on=NODES),
    Setting("kernel_panic_on_oops", boolean(), "a kernel oops panics (and so reboots)", True, read_on=NODES),
)
