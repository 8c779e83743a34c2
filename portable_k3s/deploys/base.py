"""The base every host gets: hostname, base packages, time sync, SSH hardening."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from ..connection import LOST_AFTER, ssh_tcp_options
from ..facts.files import FileStates
from ..facts.hostname import NodeName
from ..facts.packages import InstalledPackages
from ..facts.services import ServiceStates
from ..facts.timesync import Timesyncd
from ..operations import hostname, packages, prefetch, ssh, timesync

DEFAULTS: dict[str, Any] = {
    "hostname": None,  # default: the inventory name
    "base_packages": ["ca-certificates", "curl", "gnupg", "jq", "iptables", "rsync"],
    "ntp_servers": ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org", "2.debian.pool.ntp.org"],
    "ssh_permit_root_login": "prohibit-password",
    # seconds of silence after which the deploy gives a host up as lost (its commands fail, the others go on)
    "connection_lost_after": LOST_AFTER,
}


def default_hostname(name: str) -> str:
    """A host's name when its data sets none: ``@connector/NAME`` hosts are NAME, others their inventory name."""
    if name.startswith("@") and "/" in name:
        return name.split("/", 1)[1]
    return name


@deploy("Base host", data_defaults=DEFAULTS)
def base_host() -> None:
    """
    Converge the base of a host. Data keys (defaults in ``DEFAULTS``):

    + hostname: the host's name (default: its inventory name)
    + base_packages: Debian packages every host gets (``systemd-timesyncd`` is added)
    + ntp_servers: NTP servers for systemd-timesyncd
    + ssh_permit_root_login: ``prohibit-password`` (root by key only) or ``no``
    + connection_lost_after: seconds a host's SSH connection may stay silent before the run gives it up as lost
      (see ``portable_k3s.connection``)
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
