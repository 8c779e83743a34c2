"""
The apps' backups, seen from the first k3s server: ``portable-k3s backups INVENTORY`` lists each app's snapshots,
their age and size, and says which app has none as new as its schedule allows; ``portable-k3s restore INVENTORY APP``
restores an app's volume from a snapshot (the newest by default). Doctor reports the listing as one hop per app.

Both run ``k3s kubectl`` over SSH on the first server (the machine running them is not in the tailnet): a one-shot
Job (``portable_k3s.manifests.backups``) that runs restic with the cluster's ``backup`` Secret, then its log. No
secret leaves the cluster or appears in a command line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from string import hexdigits
from typing import TYPE_CHECKING, Any

import yaml

from .manifests.apps import namespace, render_app
from .manifests.backups import NAMESPACE, backed_up, list_job, restore_job
from .render import to_yaml
from .schedule import longest_gap

if TYPE_CHECKING:
    from .config import App, ClusterConfig

# Runs a shell command on a host: (host name, command, timeout in seconds) -> (ok, output).
Runner = Callable[[str, str, float], tuple[bool, str]]
GRACE = timedelta(hours=2)  # a scheduled backup may start late and take this long before its snapshot is late
LIST_TIMEOUT = 300
RESTORE_TIMEOUT = 6 * 3600
START_TIMEOUT = 300  # a Job's pod that is still Pending after this will not start (no image, no node for its volume)
HEREDOC = "PORTABLE_K3S_MANIFEST"


class BackupError(Exception):
    """A listing or restore that could not be done; the message says why and what to check."""


def backed_up_apps(config: ClusterConfig) -> list[App]:
    """The catalog's apps whose volumes are backed up."""
    return [app for app in config.apps if backed_up(app, config.addons)]


def _job_script(namespace_name: str, name: str, manifest: str, timeout: int) -> str:
    """Shell that applies a Job, waits until it succeeds or fails (at most ``timeout`` s; a pod that has not started
    within :data:`START_TIMEOUT` s, or ``timeout`` if shorter, fails it, with its events), prints its log and the
    word ``succeeded`` or ``failed`` last, and deletes it."""
    start_timeout = min(START_TIMEOUT, timeout)
    return f"""k() {{ k3s kubectl "$@"; }}
k -n {namespace_name} delete job {name} --ignore-not-found >/dev/null
cat <<'{HEREDOC}' | k apply -f - >/dev/null || exit 1
{manifest.rstrip()}
{HEREDOC}
state=failed
now=$(date +%s)
end=$((now + {timeout}))
start_by=$((now + {start_timeout}))
while :; do
  now=$(date +%s)
  case "$(k -n {namespace_name} get job {name} -o jsonpath='{{.status.succeeded}}/{{.status.failed}}')" in
    1/*) state=succeeded; break ;;
    */[1-9]*) break ;;
  esac
  if [ "$now" -gt "$end" ]; then echo "not done after {timeout} s"; break; fi
  phase=$(k -n {namespace_name} get pods -l job-name={name} -o jsonpath='{{.items[0].status.phase}}')
  if [ "$now" -gt "$start_by" ] && [ "${{phase:-Pending}}" = Pending ]; then
    echo "its pod did not start within {start_timeout} s:"
    k -n {namespace_name} describe pods -l job-name={name} | sed -n '/^Events:/,$p' | tail -n 8
    break
  fi
  sleep 2
done
k -n {namespace_name} logs job/{name} --all-containers 2>&1 | tail -n 200
k -n {namespace_name} delete job {name} --wait=false >/dev/null 2>&1
echo "$state"
"""


def list_script(app_names: list[str], config: ClusterConfig, name: str = "backups-list",
                timeout: int = LIST_TIMEOUT) -> str:
    """The command, run on the first k3s server, that prints when each app's backup CronJob was made, then each
    app's snapshots (see ``parse_listing``), within ``timeout`` s."""
    assert config.addons.backups is not None
    server = config.hosts_in("k3s_servers")[0].hostname
    created = ("k3s kubectl get cronjobs -A -l app.kubernetes.io/component=backup -o jsonpath='{range .items[*]}"
               "created {.metadata.labels.app\\.kubernetes\\.io/part-of} {.metadata.creationTimestamp}"
               "{\"\\n\"}{end}'\n")
    job = list_job(app_names, config.addons.backups, name, node=server)
    return created + _job_script(NAMESPACE, name, job, timeout)


def parse_created(output: str) -> dict[str, datetime]:
    """When each app's backup CronJob was made, from the listing's ``created APP TIME`` lines."""
    found = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "created":
            try:
                found[words[1]] = datetime.fromisoformat(words[2].replace("Z", "+00:00"))
            except ValueError:
                continue
    return found


def parse_listing(output: str) -> dict[str, list[dict[str, Any]] | str]:
    """The listing's snapshots by app (restic's JSON, oldest first), or a reason there are none to read."""
    found: dict[str, list[dict[str, Any]] | str] = {}
    app = None
    for line in output.splitlines():
        if line.startswith("== "):
            app = line[3:].strip()
            found[app] = "no answer from restic"
        elif app is not None and line.startswith("["):
            try:
                found[app] = sorted(json.loads(line), key=lambda s: str(s.get("time", "")))
            except json.JSONDecodeError:
                found[app] = f"unreadable listing: {line[:80]}"
        elif app is not None and line == "null":
            found[app] = []
        elif app is not None and line.startswith("error "):
            found[app] = f"restic failed (exit status {line[6:]}): wrong password or S3 keys, or S3 unreachable?"
    return found


def snapshot_time(snapshot: dict[str, Any]) -> datetime:
    """When restic took the snapshot (its ``time``, with nanoseconds and a UTC offset)."""
    text = str(snapshot["time"]).replace("Z", "+00:00")
    if "." in text:  # nanoseconds: more digits than Python reads
        head, _, rest = text.partition(".")
        text = head + rest.lstrip("0123456789")
    parsed = datetime.fromisoformat(text if "+" in text[10:] or "-" in text[10:] else text + "+00:00")
    return parsed.astimezone(UTC)


@dataclass
class AppBackupState:
    """One app's backups: ``ok`` when its newest snapshot is as new as its schedule allows."""

    app: str
    schedule: str
    snapshots: int
    newest: datetime | None
    size: int | None
    ok: bool
    detail: str


def states(config: ClusterConfig, listing: dict[str, list[dict[str, Any]] | str],
           created: dict[str, datetime] | None = None, now: datetime | None = None) -> list[AppBackupState]:
    """Each backed-up app's state from a listing; ``created``: when each app's backup CronJob was made (an app
    without a snapshot is late only once its schedule had time for one)."""
    now = now or datetime.now(UTC)
    backups = config.addons.backups
    assert backups is not None
    found = []
    for app in backed_up_apps(config):
        schedule = app.backup_schedule or backups.schedule
        allowed = longest_gap(schedule) + GRACE
        snapshots = listing.get(app.name, "not listed")
        if isinstance(snapshots, str):
            found.append(AppBackupState(app.name, schedule, 0, None, None, False, snapshots))
            continue
        if not snapshots:
            since = (created or {}).get(app.name)
            if since is not None and now - since <= allowed:
                found.append(AppBackupState(app.name, schedule, 0, None, None, True,
                                            f"no snapshot yet: its backups began {_age(now - since)} ago "
                                            f"(schedule {schedule!r})"))
            else:
                found.append(AppBackupState(app.name, schedule, 0, None, None, False,
                                            f"no snapshot yet (schedule {schedule!r})"))
            continue
        newest = snapshots[-1]
        taken = snapshot_time(newest)
        size = (newest.get("summary") or {}).get("total_bytes_processed")
        age = now - taken
        ok = age <= allowed
        count = f"{len(snapshots)} snapshot{'' if len(snapshots) == 1 else 's'}"
        detail = (f"{count}, newest {newest.get('short_id', '?')} {_age(age)} ago"
                  + (f", {_size(size)}" if isinstance(size, int) else "")
                  + ("" if ok else f": late, its schedule {schedule!r} allows {_age(allowed)}"))
        found.append(AppBackupState(app.name, schedule, len(snapshots), taken,
                                    size if isinstance(size, int) else None, ok, detail))
    return found


def list_backups(config: ClusterConfig, run: Runner, timeout: int = LIST_TIMEOUT) -> list[AppBackupState]:
    """List every backed-up app's snapshots on the cluster, within about ``timeout`` s (``run`` reaches the first
    k3s server)."""
    server = config.hosts_in("k3s_servers")[0].name
    apps = [app.name for app in backed_up_apps(config)]
    ok, output = run(server, list_script(apps, config, timeout=timeout), timeout + 60)
    if not ok or output.rstrip().rsplit("\n", 1)[-1].strip() != "succeeded":
        raise BackupError(f"listing the backups on {server} failed:\n{output.strip()[-2000:]}\n"
                          f"check: k3s kubectl -n {NAMESPACE} get pods; the Secret backup; app_backup_s3")
    return states(config, parse_listing(output), parse_created(output))


def volume_claim(app: App, config: ClusterConfig) -> str:
    """The app's PersistentVolumeClaim as its manifest declares it (YAML)."""
    text = render_app(app, config.apps.index(app), config.addons, lambda key, reference: "")
    return to_yaml(next(doc for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "PersistentVolumeClaim"))


def restore_script(app: App, config: ClusterConfig, snapshot: str, name: str, new_volume: bool = False) -> str:
    """The command that stops ``app``, restores its volume from ``snapshot`` and starts it again (also on failure);
    with ``new_volume``, into a new, empty volume (the old one is deleted first: lost with its node)."""
    assert config.addons.backups is not None
    ns = namespace(app)
    job = _job_script(ns, name, restore_job(app, config.addons.backups, snapshot, name), RESTORE_TIMEOUT)
    # Every pod that names the claim holds it, finished ones too (the backups' and on a gone node): all go first.
    holders = (f"k -n {ns} get pods -o jsonpath='{{range .items[*]}}{{.metadata.name}} "
               f"{{.spec.volumes[*].persistentVolumeClaim.claimName}}{{\"\\n\"}}{{end}}' | "
               f"awk '{{for (i = 2; i <= NF; i++) if ($i == \"{app.name}\") {{print $1; next}}}}'")
    renew = f"""for pod in $({holders}); do
  k -n {ns} delete pod "$pod" --force --grace-period=0 >/dev/null 2>&1
done
if ! k -n {ns} delete pvc {app.name} --ignore-not-found --wait=true --timeout=300s >/dev/null; then
  echo "the claim {app.name} is still held by: $({holders} | tr '\\n' ' ')"
  exit 1
fi
cat <<'{HEREDOC}' | k apply -f - >/dev/null || exit 1
{volume_claim(app, config)}
{HEREDOC}
""" if new_volume else ""
    return f"""k() {{ k3s kubectl "$@"; }}
replicas=$(k -n {ns} get deployment {app.name} -o jsonpath='{{.spec.replicas}}') || exit 1
suspended=$(k -n {ns} get cronjob backup -o jsonpath='{{.spec.suspend}}' 2>/dev/null)
start_again() {{
  k -n {ns} scale deployment {app.name} --replicas="${{replicas:-1}}" >/dev/null
  k -n {ns} patch cronjob backup -p "{{\\"spec\\":{{\\"suspend\\":${{suspended:-false}}}}}}" >/dev/null 2>&1
}}
trap start_again EXIT
k -n {ns} patch cronjob backup -p '{{"spec":{{"suspend":true}}}}' >/dev/null 2>&1  # no backup of a half restore
k -n {ns} scale deployment {app.name} --replicas=0 >/dev/null || exit 1
k -n {ns} wait --for=delete pod -l app.kubernetes.io/name={app.name} --timeout=300s >/dev/null 2>&1
{renew}{job}"""


def restore(config: ClusterConfig, app_name: str, run: Runner, snapshot: str = "latest",
            new_volume: bool = False) -> str:
    """Restore ``app_name``'s volume from ``snapshot`` (an ID, or ``latest``), into a new volume with
    ``new_volume``; returns the restore's log."""
    apps = {app.name: app for app in backed_up_apps(config)}
    if app_name not in apps:
        raise BackupError(f"{app_name!r} is not a backed-up app of the catalog (backed up: "
                          f"{', '.join(apps) or 'none; set app_backup_s3'})")
    if snapshot != "latest" and not (all(c in hexdigits for c in snapshot) and 8 <= len(snapshot) <= 64):
        raise BackupError(f"--snapshot {snapshot!r} is not a snapshot ID (8-64 hex digits, as "
                          "`portable-k3s backups` shows them) or latest")
    server = config.hosts_in("k3s_servers")[0].name
    name = f"restore-{time.strftime('%Y%m%d-%H%M%S')}"
    script = restore_script(apps[app_name], config, snapshot, name, new_volume)
    ok, output = run(server, script, RESTORE_TIMEOUT + 600)
    if not ok or output.rstrip().rsplit("\n", 1)[-1].strip() != "succeeded":
        hint = ("\nits volume's node is gone (local-path volumes stay on their node): restore into a new volume "
                "with --new-volume") if "volume node affinity" in output and not new_volume else ""
        raise BackupError(f"restoring {app_name} on {server} failed:\n{output.strip()[-3000:]}{hint}")
    return output.rstrip().rsplit("\n", 1)[0]


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 3600:
        return f"{max(seconds, 0) // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
