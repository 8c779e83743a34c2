"""The local lab: Debian hosts as systemd-nspawn containers on two bridged "sites".

* cloud site: the entrance + headscale host(s), reachable from this machine (which plays the internet);
* home site: the k3s nodes behind NAT: they reach out, nothing reaches in (no port forwarding, no public IP),
  except this machine's own SSH, as the owner's laptop on the home LAN would.

All hosts share one cached mmdebstrap base through per-host overlayfs. Each can run kubelet, kube-proxy, containerd
and runc (see ``Lab._nspawn_command``). Everything ``up`` creates is recorded in a state file so that ``down`` can
remove it, also after a crash, and is safe to run twice.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..versions import VERSIONS
from .artifacts import publish_all
from .common import LabError, go_arch, log

__all__ = ["Lab", "LabConfig", "LabError", "LabHost", "go_arch", "log", "run"]

DEFAULT_STATE_DIR = "/var/lib/portable-k3s/lab"
DEFAULT_CACHE_DIR = "/var/cache/portable-k3s"

# The lab image: a minimal bookworm with systemd and sshd, plus the container runtime the lab's k3s stand-in runs
# (as k3s runs its bundled one). The deploys install everything else.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "netcat-openbsd",
    "procps",
    "less",
    "containerd",
    "runc",
    "containernetworking-plugins",
)
BASE_RECIPE_VERSION = "2"  # bump when the base customisation below changes

# nspawn mounts the v1 cgroup controllers read-only; runc and kubelet make cgroups in them. This unit, baked into the
# image, makes them writable early at boot. The container's cgroup namespace is rooted at its own cgroup in every
# hierarchy (see Lab._start), so that is all it can write to.
CGROUPS_RW_UNIT_NAME = "portable-k3s-lab-cgroups-rw.service"
CGROUPS_RW_UNIT = """\
[Unit]
Description=Writable cgroup controllers for container runtimes (portable-k3s lab host)
DefaultDependencies=no
Before=sysinit.target
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for dir in $(findmnt -rn -t cgroup -O ro -o TARGET); do mount -o remount,bind,rw "$dir"; done'

[Install]
WantedBy=sysinit.target
"""

# containerd's root must be a directory of this machine: overlay snapshots cannot sit on the host's overlay root. Each
# host's is bound here, and the k3s stand-in links k3s's own path (K3S_CONTAINERD_ROOT) to it. Bound at k3s's path,
# it would outlive k3s's uninstall: "rm -rf /var/lib/rancher" cannot remove a mount point.
CONTAINERD_DIR = "/var/lib/portable-k3s-lab/containerd"
K3S_CONTAINERD_ROOT = "/var/lib/rancher/k3s/agent/containerd"

# kubelet's kernel tunables, with the values it sets at start (and fails to start when it cannot). They are not
# namespaced and /proc/sys is read-only in a lab host, so each host sees files holding these values, bound read-only
# over them: kubelet finds them set and writes nothing, and the machine keeps its own values.
# nspawn makes mounts below /proc inside the container, so their sources must be visible there: the host's files are
# bound at SYSCTL_DIR first.
SYSCTL_DIR = "/run/portable-k3s-lab/sysctl"
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}

# Beyond nspawn's defaults: reading /dev/kmsg (kubelet's OOM watcher) needs CAP_SYSLOG where kernel.dmesg_restrict
# is 1.
EXTRA_CAPABILITIES = ("CAP_SYSLOG",)

# The machine's kernel log is bound into each host for kubelet; each host's journald need not copy all of it.
JOURNALD_DROPIN = "[Journal]\nReadKMsg=no\n"

# A password-login user that exists only in the lab image, with the kind of password the seed's old cluster had:
# the base deploy must make it useless over SSH (tests assert that).
LAB_PASSWORD_USER = "labuser"  # noqa: S105 - a user name
LAB_PASSWORD = "hunter"  # noqa: S105 - a deliberately weak lab-only password

CLOUD_ROLES = ("headscale", "entrance")
GATEWAY_MODULE = "portable_k3s.lab.gateway"

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
IP_FORWARD_SAVED = Path("/run/portable-k3s-lab/ip_forward.before")


@dataclass
class LabConfig:
    """Where the lab lives and how it is wired. Every field can be overridden from the CLI."""

    state_dir: str = DEFAULT_STATE_DIR
    cache_dir: str = DEFAULT_CACHE_DIR
    cloud_bridge: str = "pk3slab-cloud"
    home_bridge: str = "pk3slab-home"
    cloud_subnet: str = "10.231.1.0/24"
    home_subnet: str = "10.231.2.0/24"
    artifact_port: int = 8780
    suite: str = "bookworm"
    home_public_index: int = 1  # the home NAT's address on the cloud site: cloud subnet + this (1 = the gateway)

    @classmethod
    def from_env(cls, **overrides: object) -> LabConfig:
        """Defaults, then ``PORTABLE_K3S_LAB_*`` environment variables, then explicit overrides."""
        config = cls()
        for name in asdict(config):
            env = os.environ.get(f"PORTABLE_K3S_LAB_{name.upper()}")
            if env is not None:
                setattr(config, name, type(getattr(config, name))(env))
        env_cache = os.environ.get("PORTABLE_K3S_CACHE")
        if env_cache and "PORTABLE_K3S_LAB_CACHE_DIR" not in os.environ:
            config.cache_dir = env_cache
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("cloud_bridge", "home_bridge"):
            value = getattr(self, name)
            if not (0 < len(value) <= 15) or "/" in value or " " in value:
                raise LabError(f"{name}: {value!r} is not a valid interface name (expected 1-15 characters)")
        if self.cloud_bridge == self.home_bridge:
            raise LabError("cloud_bridge and home_bridge must differ")
        nets = []
        for name in ("cloud_subnet", "home_subnet"):
            try:
                net = ipaddress.IPv4Network(getattr(self, name))
            except ValueError as exc:
                raise LabError(f"{name}: {exc} (expected an IPv4 network like 10.231.1.0/24)") from exc
            if net.prefixlen > 26:
                raise LabError(f"{name}: {net} is too small (expected a /26 or larger)")
            nets.append(net)
        if nets[0].overlaps(nets[1]):
            raise LabError(f"cloud_subnet {nets[0]} and home_subnet {nets[1]} overlap")
        if not 1 <= self.home_public_index <= 9:
            raise LabError(f"home_public_index: {self.home_public_index} (expected 1-9: cloud hosts start at 11)")

    @property
    def state_file(self) -> Path:
        return Path(self.state_dir) / "lab.json"

    @property
    def chain(self) -> str:
        """iptables chain names, unique per lab (derived from the home bridge name)."""
        return "PK3S-" + self.home_bridge.upper()[:20]


@dataclass
class LabHost:
    name: str
    site: str  # "cloud" or "home"
    index: int  # position on its site (address = subnet + 10 + index)
    groups: list[str] = field(default_factory=list)
    address: str = ""
    pid: int = 0
    data: dict = field(default_factory=dict)  # more inventory data for this host (see ``assign``)


def plan_hosts(count: int) -> list[LabHost]:
    """h1 on the cloud site (headscale + entrance), h2 the k3s server, h3… agents on the home site."""
    if count < 2:
        raise LabError(f"--hosts {count}: the lab needs at least 2 hosts (one per site)")
    hosts = [LabHost("h1", "cloud", 1, list(CLOUD_ROLES))]
    for i in range(2, count + 1):
        hosts.append(LabHost(f"h{i}", "home", i - 1, ["k3s_servers"] if i == 2 else ["k3s_agents"]))
    return hosts


def run(cmd: list[str], check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a local command; on failure raise LabError with its output."""
    proc = subprocess.run(cmd, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc


class Lab:
    """One lab, described by a LabConfig and recorded in ``<state_dir>/lab.json``."""

    def __init__(self, config: LabConfig | None = None) -> None:
        self.config = config or LabConfig.from_env()
        self.state_dir = Path(self.config.state_dir)

    # -- state ---------------------------------------------------------------------------------------------

    def load_state(self) -> dict:
        try:
            return dict(json.loads(self.config.state_file.read_text()))
        except FileNotFoundError:
            return {}

    def save_state(self, state: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.config.state_file)

    def adopt(self, state: dict) -> None:
        """Use the wiring the lab was brought up with (subnets, port, bridges), as recorded in its state."""
        recorded = state.get("config", {})
        for key in ("cloud_bridge", "home_bridge", "cloud_subnet", "home_subnet", "artifact_port",
                    "home_public_index"):
            if key in recorded:
                setattr(self.config, key, recorded[key])

    def _adopt_names(self, state: dict) -> None:
        """An existing lab keeps the bridge names it was made with: they name what there is to remove."""
        for key in ("cloud_bridge", "home_bridge"):
            recorded = state.get("config", {}).get(key)
            if recorded and recorded != getattr(self.config, key):
                log(f"{key}: using {recorded!r}, the name this lab was brought up with")
                setattr(self.config, key, recorded)

    def hosts(self) -> list[LabHost]:
        return [LabHost(**h) for h in self.load_state().get("hosts", [])]

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    def host_dir(self, name: str) -> Path:
        return self.state_dir / "hosts" / name

    def gateway(self, site: str) -> str:
        net = ipaddress.IPv4Network(self.config.cloud_subnet if site == "cloud" else self.config.home_subnet)
        return str(net.network_address + 1)

    def home_public_address(self) -> str:
        """The address the home site's NAT shows the cloud site (its "public IP")."""
        return str(ipaddress.IPv4Network(self.config.cloud_subnet).network_address + self.config.home_public_index)

    def address(self, host: LabHost) -> str:
        net = ipaddress.IPv4Network(self.config.cloud_subnet if host.site == "cloud" else self.config.home_subnet)
        return str(net.network_address + 10 + host.index)

    @property
    def artifact_url(self) -> str:
        return f"http://{self.gateway('cloud')}:{self.config.artifact_port}"

    @property
    def artifact_dir(self) -> Path:
        return Path(self.config.cache_dir) / "artifacts"

    # -- base image ----------------------------------------------------------------------------------------

    def base_dir(self) -> Path:
        key = hashlib.sha256(
            f"{self.config.suite}|{','.join(BASE_PACKAGES)}|{BASE_RECIPE_VERSION}".encode()
        ).hexdigest()[:12]
        return Path(self.config.cache_dir) / "lab" / f"base-{self.config.suite}-{key}"

    def ensure_base(self) -> Path:
        """Build the shared base rootfs once (cached by suite, package list and recipe version)."""
        base = self.base_dir()
        if (base / "etc" / "os-release").exists():
            return base
        if not shutil.which("mmdebstrap"):
            raise LabError("mmdebstrap is not installed (run scripts/setup.sh, or apt-get install mmdebstrap)")
        tmp = base.with_name(base.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        log(f"building the base image {base.name} with mmdebstrap (once)")
        # No mirror argument: mmdebstrap uses this machine's own apt sources.
        run(["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", self.config.suite, str(tmp)])
        for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
            run(["chroot", str(tmp), "systemctl", "mask", unit], check=False)
        # Debian's containerd never starts by itself: the k3s stand-in starts it with its own config and socket.
        run(["chroot", str(tmp), "systemctl", "disable", "containerd.service"])
        run(["chroot", str(tmp), "systemctl", "mask", "containerd.service"])
        (tmp / "usr" / "lib" / "systemd" / "system" / CGROUPS_RW_UNIT_NAME).write_text(CGROUPS_RW_UNIT)
        (tmp / "etc" / "systemd" / "journald.conf.d").mkdir(parents=True, exist_ok=True)
        (tmp / "etc" / "systemd" / "journald.conf.d" / "portable-k3s-lab.conf").write_text(JOURNALD_DROPIN)
        run(["chroot", str(tmp), "systemctl", "enable", "systemd-networkd", "ssh", CGROUPS_RW_UNIT_NAME])
        for key in (tmp / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()
        (tmp / "etc" / "machine-id").write_text("")
        run(["chroot", str(tmp), "useradd", "--create-home", "--shell", "/bin/bash", LAB_PASSWORD_USER])
        run(["chroot", str(tmp), "chpasswd"], input=f"{LAB_PASSWORD_USER}:{LAB_PASSWORD}\n")
        tmp.rename(base)
        log(f"base image built in {time.monotonic() - started:.1f}s: {base}")
        return base

    # -- up ------------------------------------------------------------------------------------------------

    def up(self, count: int = 4, timeout: float = 90.0, publish: bool = True) -> list[LabHost]:
        """Bring the lab up (idempotent): network, artifact server (with the release files the deploys download,
        built once per version), containers; wait until SSH answers."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (systemd-nspawn, bridges, iptables, overlayfs)")
        state = self.load_state()
        self._adopt_names(state)
        if state.get("hosts"):
            hosts = [LabHost(**h) for h in state["hosts"]]
            if count > len(hosts):  # a new machine at home: the next agent, with a fresh disk
                hosts += plan_hosts(count)[len(hosts):]
            elif count < len(hosts):
                log(f"keeping the existing {len(hosts)} hosts (run 'down' first to have fewer)")
        else:
            hosts = plan_hosts(count)
        state.setdefault("config", asdict(self.config))
        state["config"].update(
            home_subnet=self.config.home_subnet, cloud_subnet=self.config.cloud_subnet,
            cloud_bridge=self.config.cloud_bridge, home_bridge=self.config.home_bridge,
            artifact_port=self.config.artifact_port, home_public_index=self.config.home_public_index,
        )
        state["hosts"] = [asdict(h) for h in hosts]
        self.save_state(state)

        base = self.ensure_base()
        self._ensure_ssh_key()
        self._network_up(state)
        self.save_state(state)
        self._gateway_up(state, base)
        self.save_state(state)
        if publish:
            publish_all(VERSIONS, self.config.cache_dir, self.artifact_dir)

        started = time.monotonic()
        for host in hosts:
            host.address = self.address(host)
            if self._running(host):
                continue
            self._prepare_host(host, base)
            host.pid = self._start(host)
            state["hosts"] = [asdict(h) for h in hosts]
            self.save_state(state)
        self._write_ssh_files(hosts)
        state["hosts"] = [asdict(h) for h in hosts]
        self.save_state(state)
        self._wait_ready(hosts, timeout)
        log(f"{len(hosts)} hosts up in {time.monotonic() - started:.1f}s; state in {self.state_dir}")
        return hosts

    def _ensure_ssh_key(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        if not self.ssh_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "portable-k3s-lab", "-f", str(self.ssh_key)])

    def _network_up(self, state: dict) -> None:
        c = self.config
        # ip_forward is one switch for the whole machine, shared by every lab on it: the first lab up records
        # its value, the last lab down restores it.
        if not IP_FORWARD_SAVED.exists():
            IP_FORWARD_SAVED.parent.mkdir(parents=True, exist_ok=True)
            IP_FORWARD_SAVED.write_text(IP_FORWARD.read_text())
        for bridge, site in ((c.cloud_bridge, "cloud"), (c.home_bridge, "home")):
            subnet = ipaddress.IPv4Network(c.cloud_subnet if site == "cloud" else c.home_subnet)
            if run(["ip", "link", "show", bridge], check=False).returncode != 0:
                run(["ip", "link", "add", bridge, "type", "bridge"])
            state.setdefault("bridges", [])
            if bridge not in state["bridges"]:
                state["bridges"].append(bridge)
            wanted = {f"{self.gateway(site)}/{subnet.prefixlen}"}
            if site == "cloud":
                wanted.add(f"{self.home_public_address()}/{subnet.prefixlen}")
            current = set(re.findall(r"inet (\S+)", run(["ip", "-o", "-4", "addr", "show", "dev", bridge]).stdout))
            if current != wanted:  # left alone when right: a running site keeps its gateway
                run(["ip", "addr", "flush", "dev", bridge])
                for address in sorted(wanted):
                    run(["ip", "addr", "add", address, "dev", bridge])
            run(["ip", "link", "set", bridge, "up"])
        IP_FORWARD.write_text("1\n")
        self._firewall_down(state)  # rebuild from scratch: the subnets may have changed
        fwd, nat = f"{c.chain}-FWD", f"{c.chain}-NAT"
        run(["iptables", "-w", "-N", fwd])
        run(["iptables", "-w", "-t", "nat", "-N", nat])
        home, cloud = c.home_bridge, c.cloud_bridge
        rules = [
            # Nothing opens a connection into home: not the cloud site, not the outside world.
            ["-A", fwd, "-o", home, "!", "-i", home, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
            ["-A", fwd, "-i", home, "-o", cloud, "-j", "ACCEPT"],
            ["-A", fwd, "-i", cloud, "-o", home, "-j", "ACCEPT"],
            # Hosts on one site reach each other, as on a LAN (bridged frames pass these rules when this machine
            # has br_netfilter's bridge-nf-call-iptables on).
            *(["-A", fwd, "-i", bridge, "-o", bridge, "-j", "ACCEPT"] for bridge in (home, cloud)),
            # Lab traffic stays on this machine: the lab's hosts reach each other and this machine (the gateway
            # serves artifacts and proxies apt to this machine's mirrors), nothing beyond it.
            *(["-A", fwd, direction, bridge, "-j", "REJECT"] for bridge in (home, cloud) for direction in ("-i", "-o")),
        ]
        for rule in rules:
            run(["iptables", "-w", *rule])
        # Home sits behind NAT, as at home: the cloud site sees only the home NAT's ("public") address.
        run(["iptables", "-w", "-t", "nat", "-A", nat, "-s", c.home_subnet, "-o", cloud, "-j", "SNAT",
             "--to-source", self.home_public_address()])
        run(["iptables", "-w", "-I", "FORWARD", "1", "-j", fwd])
        run(["iptables", "-w", "-t", "nat", "-I", "POSTROUTING", "1", "-j", nat])
        state["chains"] = {"filter": fwd, "nat": nat}

    def _gateway_up(self, state: dict, base: Path) -> None:
        """Start the lab's gateway (portable_k3s.lab.gateway): artifacts, and apt to this machine's mirrors."""
        pid = state.get("gateway_pid", 0)
        if pid and _pid_matches(pid, GATEWAY_MODULE):
            return
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        logfile = open(self.state_dir / "gateway.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", GATEWAY_MODULE, "--bind", self.gateway("cloud"), "--port",
             str(self.config.artifact_port), "--directory", str(self.artifact_dir),
             "--apt-dir", "/etc/apt", "--apt-dir", str(base / "etc" / "apt")],
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        logfile.close()
        state["gateway_pid"] = proc.pid
        _wait_port(self.gateway("cloud"), self.config.artifact_port, 10, "the lab gateway")

    def _prepare_host(self, host: LabHost, base: Path) -> None:
        """Mount the host's overlay and write its identity: hostname, machine-id, host keys, network; make its
        containerd directory and kubelet's sysctl files."""
        hdir = self.host_dir(host.name)
        root = hdir / "root"
        fresh = not (hdir / "upper").exists()
        for sub in ("upper", "work", "root", "containerd", "sysctl"):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        for sysctl, value in KUBELET_SYSCTLS.items():
            (hdir / "sysctl" / sysctl.replace("/", ".")).write_text(f"{value}\n")
        if not os.path.ismount(root):
            run(["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={base},upperdir={hdir / 'upper'},workdir={hdir / 'work'}", str(root)])
        etc = root / "etc"
        if fresh:
            (etc / "hostname").write_text(f"{host.name}\n")
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host.name}\n::1 localhost\n")
            (etc / "machine-id").write_text(run(["systemd-id128", "new"]).stdout)
            for kind in ("ed25519", "rsa"):
                key = etc / "ssh" / f"ssh_host_{kind}_key"
                run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{host.name}", "-f", str(key)])
            ssh_dir = root / "root" / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            shutil.copyfile(f"{self.ssh_key}.pub", ssh_dir / "authorized_keys")
            os.chmod(ssh_dir / "authorized_keys", 0o600)
        prefix = ipaddress.IPv4Network(self.config.cloud_subnet if host.site == "cloud" else self.config.home_subnet)
        (etc / "systemd" / "network").mkdir(parents=True, exist_ok=True)
        # 10- sorts before systemd's own 80-container-host0.network, so this file wins.
        (etc / "systemd" / "network" / "10-lab.network").write_text(
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={host.address}/{prefix.prefixlen}\nGateway={self.gateway(host.site)}\n"
            "IPv6AcceptRA=no\nLinkLocalAddressing=no\n"
        )
        resolv = etc / "resolv.conf"
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text("# No resolver: lab hosts reach each other by address and nothing beyond this machine.\n")
        proxy = f"http://{self.gateway('cloud')}:{self.config.artifact_port}/"
        (etc / "apt" / "apt.conf.d" / "01portable-k3s-lab-proxy").write_text(
            f'Acquire::http::Proxy "{proxy}";\nAcquire::https::Proxy "{proxy}";\n'
        )

    def cgroup_dirs(self, name: str) -> list[Path]:
        """The container's own cgroup in every hierarchy: name=systemd and unified first, then each v1 controller
        (container runtimes inside make their cgroups there); under pure cgroup v2, the one."""
        root = Path("/sys/fs/cgroup")
        leaf = Path("portable-k3s-lab") / f"{self.config.home_bridge}-{name}"
        if (root / "cgroup.controllers").exists():  # pure cgroup v2
            return [root / leaf]
        # Co-mounted controllers show up once as a directory (e.g. cpu,cpuacct) and again as symlinks to it.
        hierarchies = [p.name for p in root.iterdir() if not p.is_symlink() and (p / "cgroup.procs").exists()]
        hierarchies.sort(key=lambda h: (h not in ("systemd", "unified"), h))
        return [root / hierarchy / leaf for hierarchy in hierarchies]

    def cpu_seconds(self) -> float:
        """CPU time the lab's hosts have used so far (their cgroups' usage), or 0.0 where it cannot be read."""
        total = 0
        for host in self.hosts():
            for cg in self.cgroup_dirs(host.name):
                stat = cg / "cpu.stat"
                fields = {}
                if stat.exists():
                    fields = dict(line.split() for line in stat.read_text().splitlines() if line.count(" ") == 1)
                if "usage_usec" in fields:  # cgroup v2's (v1's cpu controller has none)
                    total += int(fields["usage_usec"])
                    break
        return total / 1e6

    def _start(self, host: LabHost) -> int:
        cgroups = self.cgroup_dirs(host.name)
        for cg in cgroups:
            _make_cgroup(cg)

        def join_cgroups() -> None:  # runs in the child before exec
            for cg in cgroups:
                (cg / "cgroup.procs").write_text(str(os.getpid()))

        logfile = open(self.host_dir(host.name) / "console.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            self._nspawn_command(host), stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=join_cgroups,  # noqa: PLW1509 - needed to join the cgroups
        )
        logfile.close()
        return proc.pid

    def _nspawn_command(self, host: LabHost) -> list[str]:
        """The command that boots ``host``: a container that can run kubelet, kube-proxy, containerd and runc."""
        hdir = self.host_dir(host.name)
        bridge = self.config.cloud_bridge if host.site == "cloud" else self.config.home_bridge
        sysctls = [f"--bind-ro={hdir / 'sysctl'}:{SYSCTL_DIR}"]
        sysctls += [f"--bind-ro={SYSCTL_DIR}/{s.replace('/', '.')}:/proc/sys/{s}" for s in KUBELET_SYSCTLS]
        return [
            "systemd-nspawn", "--boot", "--register=no", "--keep-unit", f"--network-bridge={bridge}",
            "--resolv-conf=off", "--timezone=off", "--bind=/dev/net/tun", "--bind=/dev/kmsg",
            f"--capability={','.join(EXTRA_CAPABILITIES)}",
            "--system-call-filter=@keyring",  # runc joins a new session keyring for each container
            f"--bind={hdir / 'containerd'}:{CONTAINERD_DIR}", *sysctls, "--console=passive",
            f"--machine={self._machine_name(host)}", f"--hostname={host.name}", "-D", str(hdir / "root"),
        ]

    def _machine_name(self, host: LabHost) -> str:
        return f"{self.config.home_bridge}-{host.name}"

    def _running(self, host: LabHost) -> bool:
        return bool(host.pid) and _pid_matches(host.pid, self._machine_name(host))

    def _write_ssh_files(self, hosts: Iterable[LabHost]) -> None:
        known, config = [], []
        for host in hosts:
            pub = (self.host_dir(host.name) / "upper" / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text()
            known.append(f"{host.address} {' '.join(pub.split()[:2])}\n")
            config.append(
                f"Host {host.name}\n  HostName {host.address}\n  User root\n  IdentityFile {self.ssh_key}\n"
                f"  IdentitiesOnly yes\n  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
                "  HostKeyAlgorithms ssh-ed25519\n\n"
            )
        self.known_hosts.write_text("".join(known))
        self.ssh_config.write_text("".join(config))

    def _wait_ready(self, hosts: list[LabHost], timeout: float) -> None:
        def ready(host: LabHost) -> None:
            _wait_port(host.address, 22, timeout, f"sshd on {host.name} ({host.address})")
            deadline = time.monotonic() + timeout
            while True:
                # Bounded on the host itself, so the deadline holds (a k3s unit may keep the boot "starting"
                # while it waits for its server).
                proc = self.ssh(host.name, "timeout 15 systemctl is-system-running --wait", check=False, timeout=30)
                if proc.stdout.strip() in ("running", "degraded"):
                    return
                if time.monotonic() > deadline:
                    jobs = self.ssh(host.name, "systemctl list-jobs --no-pager; journalctl -b -n 25 --no-pager "
                                    "-u k3s -u k3s-agent -u tailscaled", check=False, timeout=30).stdout
                    raise LabError(f"{host.name} did not finish booting in {timeout:.0f} s: "
                                   f"{proc.stdout.strip()} {proc.stderr.strip()}\n{jobs}")
                time.sleep(0.5)

        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            for future in [pool.submit(ready, h) for h in hosts]:
                future.result()

    # -- use -----------------------------------------------------------------------------------------------

    def ssh(self, name: str, command: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        """Run a shell command on a lab host as root over SSH."""
        return run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                    name, command], check=check, timeout=timeout, input=input)

    def status(self) -> list[dict]:
        self.adopt(self.load_state())
        rows = []
        for host in self.hosts():
            running = self._running(host)
            rows.append({
                "name": host.name, "site": host.site, "address": host.address, "groups": host.groups,
                "running": running, "ssh": running and _port_open(host.address, 22),
            })
        return rows

    # -- down ----------------------------------------------------------------------------------------------

    def down(self, keep_state: bool = False, timeout: float = 20.0) -> None:
        """Stop and remove everything ``up`` made. Safe to run twice and after a crash.

        With ``keep_state`` the hosts' disks (overlay upper dirs and containerd's directories), keys and identity
        stay, so the next ``up`` boots the same hosts again, possibly on a renumbered home subnet.
        """
        state = self.load_state()
        self._adopt_names(state)
        hosts = [LabHost(**h) for h in state.get("hosts", [])]
        self._stop(hosts, timeout)
        pid = state.pop("gateway_pid", 0)
        if pid and _pid_matches(pid, GATEWAY_MODULE):
            os.kill(pid, signal.SIGTERM)
        self._firewall_down(state)
        config = state.get("config", {})
        bridges = set(state.get("bridges", [])) | {
            config.get("cloud_bridge", self.config.cloud_bridge), config.get("home_bridge", self.config.home_bridge)
        }
        for bridge in sorted(bridges):
            if run(["ip", "link", "show", bridge], check=False).returncode == 0:
                run(["ip", "link", "del", bridge])
        other_labs = [ln for ln in run(["iptables", "-w", "-S", "FORWARD"]).stdout.splitlines() if "-j PK3S-" in ln]
        if not other_labs and IP_FORWARD_SAVED.exists():
            IP_FORWARD.write_text(IP_FORWARD_SAVED.read_text())
            IP_FORWARD_SAVED.unlink()
            IP_FORWARD_SAVED.parent.rmdir()
        if keep_state:
            state.pop("bridges", None)
            state.pop("chains", None)
            state.pop("ip_forward_before", None)
            state["hosts"] = [asdict(h) for h in hosts]
            self.save_state(state)
        elif self.state_dir.exists():
            shutil.rmtree(self.state_dir)

    def _stop(self, hosts: list[LabHost], timeout: float) -> None:
        """Shut the hosts down (SIGTERM to their systemd, then their cgroups killed) and unmount their roots."""
        stopping = [h for h in hosts if self._running(h)]
        for host in stopping:
            self._kill_pods(host.name)
            os.kill(host.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for host in stopping:
            while self._running(host) and time.monotonic() < deadline:
                time.sleep(0.1)
        for host in hosts:
            if self._running(host):
                log(f"{host.name} did not stop in {timeout:.0f}s: killing its cgroup")
            self._kill_cgroups(host.name)
            if self._running(host):
                os.kill(host.pid, signal.SIGKILL)
            self._remove_cgroups(host.name)
            root = self.host_dir(host.name) / "root"
            for _ in range(50):
                if not os.path.ismount(root):
                    break
                if run(["umount", str(root)], check=False).returncode != 0:
                    time.sleep(0.1)
            if os.path.ismount(root):
                run(["umount", "--lazy", str(root)], check=False)
            host.pid = 0

    def move_home(self, home_subnet: str, home_public_index: int, timeout: float = 90.0) -> list[LabHost]:
        """Move house: shut the home site down, renumber its LAN and give its NAT a new public address, boot
        the same hosts (same disks and identity) again. The cloud site keeps running."""
        state = self.load_state()
        self.adopt(state)
        hosts = [LabHost(**h) for h in state.get("hosts", [])]
        if not hosts:
            raise LabError(f"no lab at {self.state_dir} (run 'up' first)")
        home = [h for h in hosts if h.site == "home"]
        self._stop(home, 20.0)
        state["hosts"] = [asdict(h) for h in hosts]
        self.save_state(state)
        self.config.home_subnet, self.config.home_public_index = home_subnet, home_public_index
        self.config.validate()
        return self.up(len(hosts), timeout)

    def reboot(self, name: str, timeout: float = 90.0) -> LabHost:
        """Shut ``name`` down and boot it again (same disk): what a power cycle does."""
        count = self.shut_down(name)
        self.up(count, timeout)
        return next(h for h in self.hosts() if h.name == name)

    def reset_host(self, name: str, timeout: float = 90.0) -> LabHost:
        """A dead disk replaced: shut ``name`` down, throw its disk away (its overlay upper dir and containerd's
        directory) and boot it again as a fresh host (new host keys and machine-id, same name and address)."""
        count = self.shut_down(name)
        for sub in ("upper", "work", "containerd"):
            shutil.rmtree(self.host_dir(name) / sub, ignore_errors=True)
        self.up(count, timeout)
        return next(h for h in self.hosts() if h.name == name)

    def assign(self, name: str, groups: list[str], data: dict | None = None) -> None:
        """Give lab host ``name`` other inventory groups (in this order) and data, as an owner edits the
        inventory: ``inventories/lab.py`` reads them from the lab's state."""
        state = self.load_state()
        hosts = state.get("hosts", [])
        host = next((h for h in hosts if h["name"] == name), None)
        if host is None:
            raise LabError(f"{name}: no such lab host (hosts: {', '.join(h['name'] for h in hosts) or 'none'})")
        host["groups"], host["data"] = list(groups), dict(data or {})
        self.save_state(state)

    def shut_down(self, name: str, timeout: float = 20.0) -> int:
        """Shut lab host ``name`` down (killed if it takes longer than ``timeout`` s), keeping its disk (``up`` boots
        it again); returns the number of hosts in the lab."""
        state = self.load_state()
        self.adopt(state)
        hosts = [LabHost(**h) for h in state.get("hosts", [])]
        host = next((h for h in hosts if h.name == name), None)
        if host is None:
            raise LabError(f"{name}: no such lab host (hosts: {', '.join(h.name for h in hosts) or 'none'})")
        self._stop([host], timeout)
        state["hosts"] = [asdict(h) for h in hosts]
        self.save_state(state)
        return len(hosts)

    def power_cut(self, name: str) -> int:
        """Cut lab host ``name``'s power as its peers see it: its link goes down first (its end of the bridge), so
        none of its connections is closed cleanly and its peers see only silence, then it is shut down, keeping its
        disk (``up`` boots it again); returns the number of hosts in the lab."""
        peer = self.ssh(name, "cat /sys/class/net/host0/iflink").stdout.strip()
        link = next((line.split(": ")[1].split("@")[0] for line in
                     run(["ip", "-o", "link", "show"]).stdout.splitlines() if line.split(": ")[0] == peer), None)
        if link is None:
            raise LabError(f"{name}: no link with index {peer} on this machine (its end of the bridge)")
        run(["ip", "link", "set", link, "down"])
        count = self.shut_down(name, timeout=2.0)  # no clean shutdown to wait for: the power is gone
        # Its end of the bridge goes with the container's network namespace; one left behind would keep the next
        # boot from making its own.
        deadline = time.monotonic() + 10
        while run(["ip", "link", "show", link], check=False).returncode == 0:
            if time.monotonic() > deadline:
                run(["ip", "link", "delete", link], check=False)
                break
            time.sleep(0.2)
        return count

    def _firewall_down(self, state: dict) -> None:
        c = self.config
        chains = state.get("chains") or {"filter": f"{c.chain}-FWD", "nat": f"{c.chain}-NAT"}
        for table, hook in (("filter", "FORWARD"), ("nat", "POSTROUTING")):
            chain = chains[table]
            while run(["iptables", "-w", "-t", table, "-D", hook, "-j", chain], check=False).returncode == 0:
                pass
            if run(["iptables", "-w", "-t", table, "-n", "-L", chain], check=False).returncode == 0:
                run(["iptables", "-w", "-t", table, "-F", chain])
                run(["iptables", "-w", "-t", table, "-X", chain])
        state.pop("chains", None)

    def _kill_pods(self, name: str) -> None:
        """Kill the processes of the host's Kubernetes pods (its kubelet's ``kubepods`` cgroups): a container's
        first process ignores SIGTERM, so the host's shutdown would wait for them until its stop timeout."""
        for cg in self.cgroup_dirs(name):
            # Pods come and go while this walks their cgroups: a directory or file gone meanwhile is skipped.
            for directory, _dirs, files in os.walk(cg / "kubepods"):
                if "cgroup.procs" not in files:
                    continue
                try:
                    pids = (Path(directory) / "cgroup.procs").read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _kill_cgroups(self, name: str) -> None:
        for cg in self.cgroup_dirs(name):
            if not cg.exists():
                continue
            kill_file = cg / "cgroup.kill"
            if kill_file.exists():
                kill_file.write_text("1")
                continue
            for procs in cg.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _remove_cgroups(self, name: str) -> None:
        for cg in self.cgroup_dirs(name):
            if not cg.exists():
                continue
            deadline = time.monotonic() + 5
            for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [cg]:
                while True:
                    try:
                        sub.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            parent = cg.parent
            try:
                parent.rmdir()  # the shared portable-k3s-lab parent, once empty
            except OSError:
                pass


def _make_cgroup(cg: Path) -> None:
    """Make cgroup ``cg`` and its parent, each with its parent's cpuset.cpus and cpuset.mems (in the v1 cpuset
    hierarchy a new cgroup has none, and takes no process until it has)."""
    for directory in (cg.parent, cg):
        directory.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (directory / knob).exists() and not (directory / knob).read_text().strip():
                (directory / knob).write_text((directory.parent / knob).read_text())


def _pid_matches(pid: int, needle: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return needle in cmdline


def _port_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_port(address: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not _port_open(address, port, 0.5):
        if time.monotonic() > deadline:
            raise LabError(f"{what} did not answer on {address}:{port} within {timeout:.0f}s")
        time.sleep(0.2)
