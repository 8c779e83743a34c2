"""The hardware baseline of a node (k3s servers and agents, exit nodes): the firmware policy first, then
laptop-as-server settings on laptops, and on every node a watchdog and a reboot after a kernel panic, so a
hung cheap machine comes back by itself."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from ..connection import ssh_tcp_options
from ..facts.files import FileStates
from ..facts.hardware import Firmware, PanicSysctl, Watchdog
from ..operations import hardware, prefetch
from ..settings import defaults
from ..settings import node_baseline as node_settings

# The inventory groups whose hosts are nodes and get this baseline.
NODE_GROUPS = frozenset({"k3s_servers", "k3s_agents", "exit_nodes"})

DEFAULTS: dict[str, Any] = defaults(node_settings.SETTINGS)  # portable_k3s.settings.node_baseline


def is_node(groups: Any) -> bool:
    """Whether a host in these groups (e.g. ``host.groups``) is a node that gets the baseline."""
    return bool(NODE_GROUPS & set(groups))


def firmware_policy_levels(value: Any) -> dict[str, str]:
    """The firmware policy for a host: its ``firmware_policy`` data over the defaults (checks it leaves
    out are the default's)."""
    return {**DEFAULTS["firmware_policy"], **(value or {})}


@deploy("Node baseline", data_defaults=DEFAULTS)
def node_baseline() -> None:
    """
    Converge the hardware baseline of a node. After one read of the host's state, the firmware policy check is
    its first operation: call this before anything else for the host, and a host whose policy says ``fail``
    fails there, so pyinfra deploys nothing else to it while the other hosts carry on. A laptop
    (``laptop``) runs as a server: logind ignores the lid and the sleep keys, sleep targets are masked, battery
    charge thresholds are set where supported, the idle console blanks. Data keys:
    ``portable_k3s.settings.node_baseline``.
    """
    ssh_tcp_options()  # SSH without Nagle's delay, a lost host noticed: see portable_k3s.connection
    policy = firmware_policy_levels(host.data.firmware_policy)
    # One command reads the firmware (for the policy check, unless every check is off) and the watchdog and
    # panic settings.
    prefetch.facts(name="Read the firmware, watchdog and panic settings in one command", reads=[
        (Watchdog, {}), (FileStates, {"paths": (hardware.WATCHDOG_DROPIN,)}),
        (PanicSysctl, {}), (FileStates, {"paths": (hardware.PANIC_SYSCTL,)}),
    ], static=[(Firmware, {})] if set(policy.values()) != {"off"} else [], early=True)
    # Its only command, on a host that fails the policy, is the one that fails the host: pyinfra then runs
    # nothing more there. (Asking for its outcome here would read the firmware while planning: a round trip of
    # its own, before the one read above.)
    hardware.firmware_policy(
        name="Check the firmware policy",
        require_coreboot=policy["require_coreboot"],
        require_me_disabled=policy["require_me_disabled"],
    )
    if host.data.laptop:
        hardware.lid_switch_ignored(name="Ignore the lid switch")
        hardware.sleep_masked(name="Disable sleep and hibernation")
        thresholds = host.data.battery_charge_thresholds
        if thresholds:
            hardware.battery_thresholds(
                name="Set battery charge thresholds", start=thresholds["start"], stop=thresholds["stop"]
            )
        hardware.console_blanking(name="Blank the idle console", minutes=host.data.console_blank_minutes)

    hardware.watchdog(name="Arm the systemd watchdog", runtime_sec=host.data.watchdog_sec)
    hardware.panic_reboot(
        name="Reboot after a kernel panic",
        reboot_sec=host.data.kernel_panic_reboot_sec,
        on_oops=host.data.kernel_panic_on_oops,
    )
