"""The base every host gets: hostname, base packages, time sync, SSH hardening."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from ..connection import ssh_tcp_options
from ..facts.files import FileStates
from ..facts.hostname import NodeName
from ..facts.packages import InstalledPackages
from ..facts.services import ServiceStates
from ..facts.timesync import Timesyncd
from ..operations import hostname, packages, prefetch, ssh, timesync
from ..settings import base as base_settings
from ..settings import defaults

DEFAULTS: dict[str, Any] = defaults(base_settings.SETTINGS)  # the registry's: portable_k3s.settings.base


def default_hostname(name: str) -> str:
    """A host's name when its data sets none: ``@connector/NAME`` hosts are NAME, others their inventory name."""
    if name.startswith("@") and "/" in name:
        return name.split("/", 1)[1]
    return name


@deploy("Base host", data_defaults=DEFAULTS)
def base_host() -> None:
    """
    Converge the base of a host: its name, packages (``systemd-timesyncd`` added), time sync and SSH hardening.
    Data keys: ``portable_k3s.settings.base`` (``hostname``, ``base_packages``, ``ntp_servers``,
    ``ssh_permit_root_login``, ``connection_lost_after``).
    """
    ssh_tcp_options()  # SSH without Nagle's delay, a lost host noticed: see portable_k3s.connection
    # sshd's hardening reads its drop-in's checksum; the rest of its state (SshdHardening) only when it changes.
    prefetch.facts(name="Read the base state in one command", reads=[
        (NodeName, {}), (InstalledPackages, {}), (Timesyncd, {}), (FileStates, {"paths": (timesync.TIMESYNCD_DROPIN,)}),
        (ServiceStates, {"units": (timesync.TIMESYNCD_UNIT,)}), (FileStates, {"paths": (ssh.HARDENING_DROPIN,)}),
    ], early=True)
    hostname.named(name="Set the hostname", hostname=host.data.hostname or default_hostname(host.name))
    packages.installed(
        name="Install base packages",
        packages=[*host.data.base_packages, "systemd-timesyncd"],
    )
    timesync.timesyncd(name="Configure time sync", servers=host.data.ntp_servers)
    ssh.hardened(name="Harden sshd", permit_root_login=host.data.ssh_permit_root_login)
