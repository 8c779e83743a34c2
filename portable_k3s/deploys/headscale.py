"""The headscale control server: install, configure, ACL policy, MagicDNS records, users."""

from __future__ import annotations

import json
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server, systemd
from pyinfra.operations.util import any_changed

from ..connection import ssh_tcp_options
from ..facts.files import FileStates
from ..facts.release import InstalledRelease
from ..facts.services import ServiceStates
from ..operations import files, headscale, packages, prefetch, release, services
from ..render import render
from ..settings import backups as backup_settings
from ..settings import defaults, resolve_secret
from ..settings import tailnet as tailnet_settings
from ..versions import VERSIONS

# portable_k3s.settings.tailnet and .backups (headscale_backup_*)
HEADSCALE_DEFAULTS: dict[str, Any] = defaults(tailnet_settings.SETTINGS, backup_settings.SETTINGS)

CONFIG = "/etc/headscale/config.yaml"
POLICY = "/etc/headscale/policy.hujson"
EXTRA_RECORDS = "/var/lib/headscale/extra-records.json"
UNIT = "/etc/systemd/system/headscale.service"
SYSUSERS = "/etc/sysusers.d/headscale.conf"
TMPFILES = "/etc/tmpfiles.d/headscale.conf"
PENDING = services.pending_marker("headscale.service")  # a config or unit change headscale has not taken up yet
POLICY_PENDING = services.pending_marker("headscale.service", "reload")  # a policy it has not taken up yet
MANAGED = (SYSUSERS, TMPFILES, UNIT, POLICY, CONFIG, PENDING, POLICY_PENDING)
BACKUP_SCRIPT = "/usr/local/lib/portable-k3s/headscale-backup"
BACKUP_SERVICE = "portable-k3s-headscale-backup.service"
BACKUP_TIMER = "portable-k3s-headscale-backup.timer"
BACKUP_S3_AUTH = "/etc/portable-k3s/headscale-backup-s3"  # curl's config with the S3 key pair, 0600
BACKUP_FILES = (BACKUP_SCRIPT, f"/etc/systemd/system/{BACKUP_SERVICE}", f"/etc/systemd/system/{BACKUP_TIMER}",
                BACKUP_S3_AUTH)
SYSUSERS_TEXT = 'u headscale - "headscale server" /var/lib/headscale /usr/sbin/nologin\n'
# The MagicDNS records file exists from the start (headscale watches it); its content is headscale.dns_records'.
TMPFILES_TEXT = (
    "d /etc/headscale 0750 root headscale -\n"
    "d /var/lib/headscale 0750 headscale headscale -\n"
    f"f {EXTRA_RECORDS} 0640 headscale headscale -\n"
)


def host_tags(groups: set[str], extra: list[str] | None = None) -> list[str]:
    """A tailnet node's tags, from its inventory groups (plus ``tailscale_tags`` data)."""
    tags = set(extra or [])
    if groups & {"k3s_servers", "k3s_agents"}:
        tags.add("tag:k3s")
    if "entrance" in groups:
        tags.add("tag:entrance")
    if "exit_nodes" in groups:
        tags.add("tag:exit")
    if not tags:
        tags.add("tag:infra")
    return sorted(tags)


RELEASE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armv7"}  # uname -m: headscale's release name
BUILTIN_TAGS = ("tag:k3s", "tag:entrance", "tag:exit", "tag:infra")


def tailnet_policy(
    admins: list[str],
    ingress_ports: list[int],
    routes: dict[str, list[str]],
    extra_tags: list[str] | None = None,
    extra_grants: list[dict] | None = None,
    pod_cidrs: list[str] | None = None,
) -> dict[str, Any]:
    """
    The tailnet's policy: k3s nodes reach each other; the entrance reaches k3s nodes only on the ingress ports;
    admins reach everything; every node and user may use the exit nodes; exit nodes and the subnet routes named
    in the inventory are approved automatically.

    + admins: headscale user names of the admins
    + ingress_ports: TCP ports the entrance may open on k3s nodes (80, 443 and the raw TCP apps)
    + routes: ``{cidr: [tags of the nodes that advertise it]}``
    + pod_cidrs: pod networks the k3s nodes route through the tailnet ("native" k3s mode): k3s nodes may
      advertise them (approved automatically) and reach them
    """
    owners = ["group:admins"]
    tags = sorted(set(BUILTIN_TAGS) | set(extra_tags or []))
    policy: dict[str, Any] = {
        "groups": {"group:admins": [f"{name}@" for name in admins]},
        "tagOwners": {tag: owners for tag in tags},
        "grants": [
            {"src": ["tag:k3s"], "dst": ["tag:k3s"], "ip": ["*"]},
            *([{"src": ["tag:k3s"], "dst": sorted(pod_cidrs), "ip": ["*"]}] if pod_cidrs else []),
            {"src": ["tag:entrance"], "dst": ["tag:k3s"], "ip": [f"tcp:{port}" for port in sorted(ingress_ports)]},
            {"src": ["group:admins"], "dst": ["*"], "ip": ["*"]},
            {"src": ["autogroup:member", "autogroup:tagged"], "dst": ["autogroup:internet"], "ip": ["*"]},
            *(extra_grants or []),
        ],
        "autoApprovers": {
            "exitNode": ["tag:exit"],
            "routes": {
                cidr: sorted(t) for cidr, t in sorted({**routes, **{c: ["tag:k3s"] for c in pod_cidrs or []}}.items())
            },
        },
    }
    return policy


@deploy("headscale server", data_defaults=HEADSCALE_DEFAULTS)
def headscale_server(policy: dict[str, Any]) -> None:
    """
    Install and run headscale. Data keys: the headscale and ``tailnet_*`` ones of
    ``portable_k3s.settings.tailnet``, the ``headscale_backup*`` ones of ``portable_k3s.settings.backups``,
    ``headscale_restore``, ``versions["headscale"]``.

    + policy: the ACL policy (see ``tailnet_policy``); a policy-only change reloads headscale, no restart
    """
    ssh_tcp_options()  # SSH without Nagle's delay, a lost host noticed: see portable_k3s.connection
    data = host.data
    version = (data.get("versions") or {}).get("headscale", VERSIONS["headscale"]).lstrip("v")
    reads: list[tuple[Any, dict[str, Any]]] = [
        (FileStates, {"paths": MANAGED}), (ServiceStates, {"units": ("headscale.service",)}),
        (InstalledRelease, {"component": "headscale", "paths": ["/usr/local/bin/headscale"]}),
        (FileStates, {"paths": (EXTRA_RECORDS,)}),  # the MagicDNS records, written by headscale.dns_records
    ]
    # Not headscale's users and nodes: read here, before a restore or a (re)start, the answer would be stale for the
    # joining nodes (a restored database's registrations were then missed, and a rebuilt host joined as h1-abc123).
    if data.headscale_backup:
        reads += [(FileStates, {"paths": BACKUP_FILES}), (ServiceStates, {"units": (BACKUP_TIMER,)})]
    if data.headscale_restore:
        reads.append((FileStates, {"paths": (headscale.DATABASE,)}))
    prefetch.facts(name="Read the headscale state in one command", reads=reads, early=True)
    base = f"{data.headscale_download_url.rstrip('/')}/v{version}"
    # The system user and its directories, declared to systemd (sysusers.d, tmpfiles.d): two files that the
    # component's one FileStates read covers, instead of a user, a group and three paths read one by one.
    accounts = files.content(name="headscale system user", path=SYSUSERS, text=SYSUSERS_TEXT, batch=MANAGED)
    dirs = files.content(name="headscale directories", path=TMPFILES, text=TMPFILES_TEXT, batch=MANAGED)
    server.shell(
        name="Create the headscale user and directories",
        commands=[f"systemd-sysusers {SYSUSERS} && systemd-tmpfiles --create {TMPFILES}"],
        _if=any_changed(accounts, dirs),
    )
    binary = release.installed(
        name="Install headscale",
        component="headscale",
        version=version,
        machines={m: {"url": f"{base}/headscale_{version}_linux_{arch}"} for m, arch in RELEASE_ARCH.items()},
        checksum_url=None if data.headscale_sha256 else f"{base}/checksums.txt",
        sha256=data.headscale_sha256,
        files={"": "/usr/local/bin/headscale"},
        pending=PENDING,
    )
    if data.headscale_restore:  # before anything runs headscale (configtest, a start): both make an empty database
        headscale.restored(name="Restore headscale from a backup", archive=data.headscale_restore)
    unit = files.content(name="headscale unit", path=UNIT, text=render("headscale.service.j2"), batch=MANAGED,
                         pending=PENDING)
    # A change written by a run that stopped before restarting headscale is still to be taken up.
    pending, policy_pending = services.left_pending(PENDING, MANAGED), services.left_pending(POLICY_PENDING, MANAGED)
    systemd.daemon_reload(name="Reload systemd for headscale", _if=lambda: unit.did_change() or pending())
    policy_file = files.content(
        name="headscale ACL policy", path=POLICY, text=json.dumps(policy, indent=2) + "\n",
        mode="0640", group="headscale", batch=MANAGED, pending=POLICY_PENDING,
        # A running headscale checks a new policy against its users; on a first install configtest does.
        validate="! systemctl is-active --quiet headscale.service || headscale policy check --file {} >/dev/null",
    )
    config = files.content(
        name="headscale config", path=CONFIG, mode="0640", group="headscale", batch=MANAGED, pending=PENDING,
        text=render(
            "headscale.yaml.j2", server_url=data.headscale_url, listen_addr=data.headscale_listen_addr,
            derp=data.tailnet_derp, derp_ipv4=data.get("headscale_derp_ipv4"), base_domain=data.tailnet_domain,
            nameservers=list(data.tailnet_nameservers),
        ),
        validate="runuser -u headscale -- headscale configtest -c {}",
    )
    changed = any_changed(config, unit, binary)

    def restart() -> bool:
        return bool(changed()) or pending()

    services.running(name="Run headscale", service="headscale.service")
    services.restarted(
        name="Restart headscale after a config, unit or binary change", service="headscale.service",
        pending=(PENDING, POLICY_PENDING), _if=restart,
    )
    services.reloaded(
        name="Reload the headscale ACL policy", service="headscale.service", pending=POLICY_PENDING,
        _if=lambda: (bool(policy_file.did_change()) or policy_pending()) and not restart(),
    )
    headscale.users(name="headscale users", names=list(data.tailnet_admins))
    backups()


def s3_url(s3: dict[str, Any]) -> str:
    """The URL the archives go to (path style: ``https://ENDPOINT/BUCKET/FOLDER/``), from ``headscale_backup_s3``."""
    scheme = "http" if s3.get("insecure") else "https"
    folder = str(s3.get("folder") or "").strip("/")
    return f"{scheme}://{s3['endpoint']}/{s3['bucket']}/" + (f"{folder}/" if folder else "")


def backups() -> None:
    """The backup timer of the headscale host (or its removal when ``headscale_backup`` is False)."""
    data = host.data
    if not data.headscale_backup:
        services.stopped(name="No headscale backups", service=BACKUP_TIMER)
        for path in BACKUP_FILES:
            files.absent(name=f"Remove {path}", path=path, batch=BACKUP_FILES)
        return
    directory = data.headscale_backup_dir
    s3 = data.headscale_backup_s3
    packages.installed(name="sqlite3 for consistent headscale backups", packages=["sqlite3", "curl"])
    files.content(
        name="headscale backup script", path=BACKUP_SCRIPT, mode="0755", batch=BACKUP_FILES,
        text=render("headscale-backup.sh.j2", dir=directory, keep=int(data.headscale_backup_keep),
                    s3={"url": s3_url(s3), "region": s3.get("region") or "us-east-1"} if s3 else None),
    )
    if s3:
        key = resolve_secret(data.s3_access_key, "s3_access_key").unmask().strip()
        secret = resolve_secret(data.s3_secret_key, "s3_secret_key").unmask().strip()
        files.content(name="S3 key pair for the headscale backups", path=BACKUP_S3_AUTH, mode="0600",
                      batch=BACKUP_FILES, text=f'user = "{key}:{secret}"\n')
    else:
        files.absent(name="No S3 key pair for the headscale backups", path=BACKUP_S3_AUTH, batch=BACKUP_FILES)
    unit = files.content(
        name="headscale backup service", path=BACKUP_FILES[1], batch=BACKUP_FILES,
        text=render("headscale-backup.service.j2", script=BACKUP_SCRIPT, credential=BACKUP_S3_AUTH if s3 else None),
    )
    timer = files.content(
        name="headscale backup timer", path=BACKUP_FILES[2], batch=BACKUP_FILES,
        text=render("headscale-backup.timer.j2", schedule=data.headscale_backup_schedule),
    )
    systemd.daemon_reload(name="Reload systemd for the headscale backups", _if=any_changed(unit, timer))
    services.restarted(name="Restart the headscale backup timer", service=BACKUP_TIMER, _if=timer.did_change)
    services.running(name="Run the headscale backup timer", service=BACKUP_TIMER)
