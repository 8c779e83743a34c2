"""The apps' off-site backups: restic, one encrypted repository per app under ``app_backup_s3``.

Each backed-up app's manifest gets a Secret ``backup`` (the repository password and the S3 keys) and a CronJob
``backup``: a pod on the app's node (its volume is ReadWriteOnce) that first makes a consistent copy of every SQLite
database on the volume (``sqlite3 .backup``, for the kinds that keep one), then backs the volume up with restic
(the live databases left out, their copies in), then forgets snapshots beyond ``app_backup_keep`` and prunes.

Restores and listings run as one-shot Jobs (``restore_job``, ``list_job``) that ``portable_k3s.backups`` applies
with kubectl: a restore into the app's namespace (the app stopped), a listing in :data:`NAMESPACE`, which has the
same Secret, so the backups of an app removed from the catalog (its repository stays) can be listed and restored.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from ..render import render, to_yaml
from ..versions import IMAGES
from .apps import kind_of, namespace

if TYPE_CHECKING:
    from ..config import AddonsConfig, App, AppBackups

NAMESPACE = "portable-k3s-backups"
SECRET = "backup"  # noqa: S105 - the Secret's name
SECRET_KEYS = ("password", "credentials")  # restic's password file, the S3 keys as an AWS credentials file
SECRETS_DIR = "/secrets"  # where the pods mount them (files, never environment variables)
# Where the pods mount the app's volume, and the consistent copies of its SQLite databases (the snapshot's paths).
DATA = "/data"
COPIES = "/consistent"
LIVE_LIST = f"{COPIES}/.live"  # the live databases (and their -wal, -shm, -journal) the backup leaves out

# Copies every SQLite database on the volume with sqlite3's online backup (consistent while the app writes), owned
# as the original, into COPIES at the same relative path; lists the originals in LIVE_LIST.
SQLITE_COPIES = f"""set -eu
: > {LIVE_LIST}
find {DATA} -type f -size +0 | while IFS= read -r db; do
  [ "$(head -c 15 "$db")" = "SQLite format 3" ] || continue
  case "$db" in *"'"*) echo "skipped (a quote in its name): $db" >&2; continue ;; esac
  copy="{COPIES}${{db#{DATA}}}"
  mkdir -p "$(dirname "$copy")"
  sqlite3 -cmd ".timeout 30000" "$db" ".backup '$copy'"
  chown "$(stat -c %u:%g "$db")" "$copy"
  chmod "$(stat -c %a "$db")" "$copy"
  printf '%s\\n%s-wal\\n%s-shm\\n%s-journal\\n' "$db" "$db" "$db" "$db" >> {LIVE_LIST}
  echo "consistent copy of $db"
done
"""

# Opens the app's repository, creating it on the first backup (restic exits 10 when there is none).
OPEN_REPOSITORY = """status=0
restic cat config >/dev/null || status=$?
if [ "$status" = 10 ]; then restic init; elif [ "$status" != 0 ]; then exit "$status"; fi
"""

BACKUP = f"""set -eu
{OPEN_REPOSITORY}exclude=""
if [ -s {LIVE_LIST} ]; then exclude="--exclude-file={LIVE_LIST}"; fi
restic backup --host "$APP" --tag portable-k3s $exclude {DATA} {COPIES}
restic forget --host "$APP" --prune $KEEP
"""

# The app is stopped. The volume is emptied, the snapshot restored over it, and each database's consistent copy
# put in place of the live file it was taken from.
RESTORE = f"""set -eu
restic snapshots --host "$APP" "$SNAPSHOT" >/dev/null
find {DATA} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +
restic restore "$SNAPSHOT" --host "$APP" --target /
cd {COPIES}
find . -type f ! -path ./.live | while IFS= read -r copy; do
  live="{DATA}/${{copy#./}}"
  rm -f "$live-wal" "$live-shm" "$live-journal"
  cp -p "$copy" "$live"
done
echo "restored $APP from snapshot $SNAPSHOT"
"""

# One line per app: "== APP", then its snapshots as restic's JSON, or "null" when it has no repository.
LIST = """set -u
for app in $APPS; do
  echo "== $app"
  status=0
  RESTIC_REPOSITORY="$REPOSITORY_BASE/$app" restic snapshots --no-lock --json || status=$?
  if [ "$status" = 10 ]; then echo null; elif [ "$status" != 0 ]; then echo "error $status"; fi
done
"""


def repository_base(s3: dict[str, Any]) -> str:
    """The repositories' location for restic: ``s3:https://ENDPOINT/BUCKET[/FOLDER]`` (``http`` when insecure)."""
    scheme = "http" if s3.get("insecure") else "https"
    folder = str(s3.get("folder") or "").strip("/")
    return f"s3:{scheme}://{s3['endpoint']}/{s3['bucket']}" + (f"/{folder}" if folder else "")


def backed_up(app: App, addons: AddonsConfig) -> bool:
    """Whether ``app``'s volume is backed up: backups are on, it has a volume, and neither it nor its kind opts out."""
    kind = kind_of(app)
    if addons.backups is None or kind is None or kind.chart or not (app.storage or kind.storage):
        return False
    return app.backup if app.backup is not None else kind.backup


def secret_values(password: str, access_key: str, secret_key: str) -> dict[str, str]:
    """The ``backup`` Secret's data: the repositories' password, and the S3 key pair as an AWS credentials file."""
    credentials = (f"[default]\naws_access_key_id = {access_key.strip()}\n"
                   f"aws_secret_access_key = {secret_key.strip()}\n")
    return dict(zip(SECRET_KEYS, (password.strip(), credentials), strict=True))


def _secret(namespace_name: str, values: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": namespace_name},
            "type": "Opaque", "stringData": dict(values)}


def _env(backups: AppBackups, **values: Any) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "AWS_DEFAULT_REGION", "value": str(backups.s3.get("region") or "us-east-1")},
                                 {"name": "RESTIC_CACHE_DIR", "value": "/cache"}]
    env += [{"name": name, "value": value} for name, value in values.items()]
    env += [{"name": "RESTIC_PASSWORD_FILE", "value": f"{SECRETS_DIR}/password"},
            {"name": "AWS_SHARED_CREDENTIALS_FILE", "value": f"{SECRETS_DIR}/credentials"}]
    return env


SECRETS_VOLUME = {"name": "secrets", "secret": {"secretName": SECRET, "defaultMode": 0o400}}


def _restic(script: str, env: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "restic", "image": IMAGES["restic"], "command": ["/bin/sh", "-c", script], "env": env,
        "volumeMounts": [*mounts, {"name": "cache", "mountPath": "/cache"},
                         {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True}],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
    }


def _pod(app: App, backups: AppBackups, script: str, values: dict[str, Any], sqlite: bool,
         read_only: bool) -> dict[str, Any]:
    """The pod of a backup (``read_only``) or a restore of ``app``'s volume."""
    data = {"name": "data", "mountPath": DATA, "readOnly": read_only}
    copies = {"name": "copies", "mountPath": COPIES}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsUser": 0, "runAsGroup": 0},
        "containers": [_restic(script, _env(backups, APP=app.name, **values), [data, copies])],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": app.name}},
            {"name": "copies", "emptyDir": {}},
            {"name": "cache", "emptyDir": {}},
            SECRETS_VOLUME,
        ],
    }
    if read_only:
        # The volume is ReadWriteOnce: the backup runs where the app runs.
        spec["affinity"] = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100, "podAffinityTerm": {
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": app.name}},
                "topologyKey": "kubernetes.io/hostname"}}]}}
    if sqlite:
        spec["initContainers"] = [{
            "name": "sqlite-copies", "image": IMAGES["sqlite"], "command": ["/bin/sh", "-c", SQLITE_COPIES],
            "volumeMounts": [{"name": "data", "mountPath": DATA}, copies],
            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
        }]
    return spec


def _labels(app_name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": app_name, "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "portable-k3s"}


def keep_arguments(keep: dict[str, int]) -> str:
    """``restic forget``'s ``--keep-*`` arguments."""
    return " ".join(f"--keep-{period} {count}" for period, count in keep.items())


def render_app_backup(app: App, backups: AppBackups, values: dict[str, str]) -> str:
    """The Secret and the CronJob that back ``app``'s volume up (YAML documents, each after ``---``)."""
    kind = kind_of(app)
    assert kind is not None
    ns = namespace(app)
    env = {"RESTIC_REPOSITORY": f"{repository_base(backups.s3)}/{app.name}", "KEEP": keep_arguments(backups.keep)}
    cronjob = {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "backup", "namespace": ns, "labels": _labels(app.name, "backup")},
        "spec": {
            "schedule": app.backup_schedule or backups.schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": 6 * 3600,
                "template": {
                    "metadata": {"labels": _labels(app.name, "backup")},
                    "spec": _pod(app, backups, BACKUP, env, kind.sqlite, read_only=True),
                },
            }},
        },
    }
    return "".join(f"\n---\n{to_yaml(doc)}\n" for doc in (_secret(ns, values), cronjob))


def render_backups_namespace(values: dict[str, str]) -> str:
    """:data:`NAMESPACE`, where listings run, with the ``backup`` Secret."""
    text = render("manifests/namespace.yaml.j2", namespace=NAMESPACE, privileged=False)
    header = ("# Where portable-k3s lists the apps' backups (portable-k3s backups INVENTORY); the repositories' "
              "password\n# and S3 keys. Written by portable-k3s (portable_k3s/manifests/backups.py).\n")
    return header + text.rstrip("\n") + f"\n---\n{to_yaml(_secret(NAMESPACE, values))}\n"


def restore_job(app: App, backups: AppBackups, snapshot: str, name: str) -> str:
    """A Job that restores ``app``'s volume from ``snapshot`` (an ID or ``latest``); the app must be stopped."""
    env = {"RESTIC_REPOSITORY": f"{repository_base(backups.s3)}/{app.name}", "SNAPSHOT": snapshot}
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace(app), "labels": _labels(app.name, "restore")},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 6 * 3600, "ttlSecondsAfterFinished": 7 * 86400,
                 "template": {"metadata": {"labels": _labels(app.name, "restore")},
                              "spec": _pod(app, backups, RESTORE, env, sqlite=False, read_only=False)}},
    }
    return to_yaml(job) + "\n"


def list_job(app_names: list[str], backups: AppBackups, name: str, node: str | None = None) -> str:
    """A Job in :data:`NAMESPACE` that prints the snapshots of each app's repository (see :data:`LIST`), its pod on
    ``node`` where it can run (the node that asks: a listing then does not wait on another node being down)."""
    env = _env(backups, REPOSITORY_BASE=repository_base(backups.s3), APPS=" ".join(shlex.quote(a) for a in app_names))
    preferred = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": {
        "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}}]}}
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": _labels("backups", "list")},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 600,
                 "template": {"metadata": {"labels": _labels("backups", "list")}, "spec": {
                     "restartPolicy": "Never",
                     **({"affinity": preferred} if node else {}),
                     "containers": [_restic(LIST, env, [])],
                     "volumes": [{"name": "cache", "emptyDir": {}}, SECRETS_VOLUME],
                 }}},
    }
    return to_yaml(job) + "\n"
