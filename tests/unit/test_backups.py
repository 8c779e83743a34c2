"""The apps' backups without a cluster: cron schedules, the keys' validation (each problem names its key), the
rendered CronJobs and Secrets, the rook toolbox switch, and what `portable-k3s backups` / `restore` send to the
first server and read back (restic's JSON)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest
import yaml

from portable_k3s.backups import (
    HEREDOC,
    BackupError,
    list_script,
    parse_created,
    parse_listing,
    restore,
    restore_script,
    snapshot_time,
    states,
)
from portable_k3s.config import load_inventory
from portable_k3s.manifests import render_manifests
from portable_k3s.manifests.backups import NAMESPACE, SECRET_KEYS, backed_up, list_job, repository_base
from portable_k3s.schedule import cron_problem, longest_gap
from tests.unit.test_config import good_data, make_inventory, problems_of
from tests.unit.test_manifests import BACKUPS, ENTRANCE_IP, KUBERNETES, REPO, _home

SECRET_VALUES = {"all.app_backup_password": "pw-0123456789", "all.s3_access_key": "AKIDLAB",
                 "all.s3_secret_key": "s3-secret-9876"}


def _secret(key: str, reference: Any) -> str:
    return SECRET_VALUES.get(key, f"value-of-{key}")


@pytest.mark.parametrize(("schedule", "gap"), [
    ("30 3 * * *", timedelta(days=1)),
    ("@hourly", timedelta(hours=1)),
    ("*/15 * * * *", timedelta(minutes=15)),
    ("0 4 * * sun", timedelta(days=7)),
    ("0 2,14 * * *", timedelta(hours=12)),
    ("0 0 31 * *", timedelta(days=61)),  # months without a 31st are skipped
    ("0 3 1,15 * mon", timedelta(days=7)),  # day of month OR day of week, as cron reads both
])
def test_cron_schedules_and_their_longest_gap(schedule: str, gap: timedelta) -> None:
    assert cron_problem(schedule) is None
    assert longest_gap(schedule) == gap


@pytest.mark.parametrize(("schedule", "problem"), [
    ("30 3 * *", "4 fields instead of 5"),
    ("61 * * * *", "minute: '61' is outside 0-59"),
    ("0 0 5-1 * *", "runs backwards"),
    ("0 0 * * funday", "not a number or a name like sun"),
    ("*/0 * * * *", "step '0' is not a positive number"),
    ("0 0 30 2 *", "never runs"),
    (3, "int is not a text"),
])
def test_bad_cron_schedules_say_why(schedule: Any, problem: str) -> None:
    found = cron_problem(schedule)
    assert found is not None and problem in found, found


def _with(**changes: Any) -> Any:
    data = good_data()
    data.update(BACKUPS)
    data.update(changes)
    return make_inventory(data={k: v for k, v in data.items() if v is not None})


@pytest.mark.parametrize(("changes", "expected"), [
    ({"app_backup_schedule": "daily"},
     "all.app_backup_schedule: 'daily': 1 fields instead of 5 (minute hour day-of-month month day-of-week) "
     "(expected a cron schedule like '30 3 * * *' (minute hour day-of-month month day-of-week) or @daily)"),
    ({"app_backup_keep": {"daily": 0}}, "all.app_backup_keep.daily: 0 is out of range"),
    ({"app_backup_keep": {"dayly": 7}}, "all.app_backup_keep.dayly: is not a period (expected one of last, hourly"),
    ({"app_backup_keep": {}}, "all.app_backup_keep: keeps nothing"),
    ({"app_backup_keep": 7}, "all.app_backup_keep: 7 is an int"),
    ({"app_backup_password": None}, "all.app_backup_password: is missing while app_backup_s3 is set"),
    ({"app_backup_password": "hunter2"}, "app_backup_password"),  # a literal secret: references only
    ({"s3_secret_key": None}, "all.s3_secret_key: is missing while app_backup_s3 is set"),
    ({"app_backup_s3": {"endpoint": "https://s3.example.org", "bucket": "b"}}, "all.app_backup_s3: endpoint"),
    ({"app_backup_s3": {"endpoint": "s3.example.org", "bucket": "b", "insecure": "yes"}},
     "all.app_backup_s3: insecure 'yes' is not True or False"),
    ({"rook_ceph_toolbox": "off"}, "all.rook_ceph_toolbox: 'off' is a str"),
])
def test_bad_backup_keys_are_refused_naming_the_key(changes: dict[str, Any], expected: str) -> None:
    problems = problems_of(_with(**changes), require_secrets=False)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(("app", "expected"), [
    ({"name": "kutt", "hostname": "s.example.org", "backup": "no"}, "all.apps[5].backup: 'no' is a str"),
    ({"name": "jupyterhub", "hostname": "j.example.org", "backup": True},
     "all.apps[5].backup: True for a jupyterhub app with its Helm chart's volumes"),
    ({"name": "site", "kind": "container", "image": "me/site:1.0", "hostname": "x.example.org", "backup": True},
     "all.apps[5].backup: True for a container app with no volume (give it storage)"),
    ({"name": "kutt", "hostname": "s.example.org", "backup_schedule": "0 25 * * *"},
     "all.apps[5].backup_schedule: '0 25 * * *': hour: '25' is outside 0-23"),
    ({"name": "notdeployed", "hostname": "n.example.org", "backup": False},
     "all.apps[5].backup: is set, but the cluster does not run an app without a kind"),
])
def test_bad_app_backup_keys_name_the_app(app: dict[str, Any], expected: str) -> None:
    data = good_data()
    data.update(BACKUPS)
    data["apps"].append(app)
    problems = problems_of(make_inventory(data=data), require_secrets=False)
    assert any(expected in problem for problem in problems), problems


def _documents(manifests: dict[str, str]) -> list[dict[str, Any]]:
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def _cluster(**changes: Any) -> Any:
    return _home(**{**BACKUPS, **changes})


def test_every_backed_up_app_has_a_cronjob_and_its_secret_and_no_secret_elsewhere() -> None:
    config = _cluster()
    manifests = render_manifests(config, [ENTRANCE_IP], _secret)
    documents = _documents(manifests)
    cronjobs = {doc["metadata"]["namespace"]: doc for doc in documents if doc["kind"] == "CronJob"}
    backed = {app.name for app in config.apps if backed_up(app, config.addons)}
    assert {f"app-{name}" for name in backed} == set(cronjobs)
    deployed = {app.name: app for app in config.apps if app.deployed}
    # prometheus opts out by its kind; a chart's volumes (jupyterhub) are not the app's volume.
    assert "prometheus" in deployed and "prometheus" not in backed
    assert "jupyterhub" in deployed and "jupyterhub" not in backed
    for name in backed:
        job = cronjobs[f"app-{name}"]
        assert job["spec"]["schedule"] == "30 3 * * *" and job["spec"]["concurrencyPolicy"] == "Forbid"
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["RESTIC_REPOSITORY"]["value"] == f"s3:https://s3.example.org/backups/apps/{name}"
        assert env["KEEP"]["value"] == "--keep-daily 7 --keep-weekly 4 --keep-monthly 6"
        assert env["AWS_DEFAULT_REGION"]["value"] == "eu-1"
        # The secrets are files from the Secret (not environment variables, which land in the container's spec).
        assert env["RESTIC_PASSWORD_FILE"]["value"] == "/secrets/password"
        assert env["AWS_SHARED_CREDENTIALS_FILE"]["value"] == "/secrets/credentials"
        assert {"name": "secrets", "secret": {"secretName": "backup", "defaultMode": 0o400}} in pod["volumes"]
        assert not [e for e in env.values() if "valueFrom" in e]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == name
        assert pod["containers"][0]["image"] == "restic/restic:0.18.1"
        sqlite = [c for c in pod.get("initContainers", []) if c["name"] == "sqlite-copies"]
        assert bool(sqlite) == (name in ("kutt", "nextcloud", "gitea", "vaultwarden", "ntfy", "baikal")), name
    secrets = [doc for doc in documents if doc["kind"] == "Secret" and doc["metadata"]["name"] == "backup"]
    assert {doc["metadata"]["namespace"] for doc in secrets} == {f"app-{n}" for n in backed} | {NAMESPACE}
    for doc in secrets:
        assert doc["stringData"] == {"password": "pw-0123456789", "credentials": (
            "[default]\naws_access_key_id = AKIDLAB\naws_secret_access_key = s3-secret-9876\n")}
        assert set(doc["stringData"]) == set(SECRET_KEYS)
    others = [doc for doc in documents if not (doc["kind"] == "Secret" and doc["metadata"]["name"] == "backup")]
    for value in SECRET_VALUES.values():
        assert value not in yaml.safe_dump_all(others)


def test_no_backups_without_app_backup_s3_and_opt_out_and_own_schedule() -> None:
    plain = render_manifests(_home(), [ENTRANCE_IP], _secret)
    assert not [doc for doc in _documents(plain) if doc["kind"] == "CronJob"]
    assert "portable-k3s-backups.yaml" not in plain
    home = load_inventory(str(REPO / "inventories" / "home.py"), cwd=str(REPO))
    apps = [dict(app) for app in home.get_data()["apps"]]
    for app in apps:
        app.update({"blog": {"backup": False}, "kutt": {"backup_schedule": "0 */6 * * *"},
                    "prometheus": {"backup": True}}.get(app["name"], {}))
    config = _cluster(apps=apps)
    cronjobs = {doc["metadata"]["namespace"]: doc for doc in
                _documents(render_manifests(config, [ENTRANCE_IP], _secret)) if doc["kind"] == "CronJob"}
    assert "app-blog" not in cronjobs and "app-prometheus" in cronjobs
    assert cronjobs["app-kutt"]["spec"]["schedule"] == "0 */6 * * *"


def test_the_rook_toolbox_follows_rook_ceph_toolbox() -> None:
    def tools(**changes: Any) -> list[dict[str, Any]]:
        documents = _documents(render_manifests(_home(**changes), [ENTRANCE_IP], _secret))
        return [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "rook-ceph-tools"]

    found = tools()
    assert len(found) == 1 and found[0]["metadata"]["namespace"] == "rook-ceph"
    container = found[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "quay.io/ceph/ceph:v19.2.3"
    assert "mon_host" in container["command"][-1]
    assert tools(rook_ceph_toolbox=False) == []


def test_repository_base_and_the_listing_job() -> None:
    assert repository_base({"endpoint": "h:9000", "bucket": "b", "insecure": True}) == "s3:http://h:9000/b"
    assert repository_base({"endpoint": "s3.example.org", "bucket": "b", "folder": "/x/y/"}) == \
        "s3:https://s3.example.org/b/x/y"
    config = _cluster()
    assert config.addons.backups is not None
    job = yaml.safe_load(list_job(["blog", "kutt"], config.addons.backups, "backups-list"))
    assert job["metadata"]["namespace"] == NAMESPACE
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["APPS"] == "blog kutt" and env["REPOSITORY_BASE"] == "s3:https://s3.example.org/backups/apps"
    assert "affinity" not in job["spec"]["template"]["spec"]


def test_a_listing_runs_on_the_server_that_asks_where_it_can_and_gives_up_within_its_time() -> None:
    """The listing's pod prefers the first server's node (a node that is down does not hold a listing up), and a
    pod that has not started is given up within the listing's time (doctor gives it 120 s)."""
    config = _cluster()
    server = config.hosts_in("k3s_servers")[0].hostname
    script = list_script(["blog"], config, timeout=120)
    manifest = script.split(f"<<'{HEREDOC}'", 1)[1].split("\n", 1)[1].split(f"\n{HEREDOC}", 1)[0]
    job = yaml.safe_load(manifest)
    kubernetes_validate.validate(job, KUBERNETES, strict=True)
    affinity = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == [{"weight": 100, "preference": {"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [server]}]}}]
    assert "end=$((now + 120))" in script and "start_by=$((now + 120))" in script
    assert "start_by=$((now + 300))" in list_script(["blog"], config)


def _snapshot(short: str, when: datetime, size: int) -> dict[str, Any]:
    return {"time": when.strftime("%Y-%m-%dT%H:%M:%S.123456789+00:00"), "short_id": short, "id": short * 8,
            "hostname": "x", "summary": {"total_bytes_processed": size}}


def test_listing_parsed_and_late_apps_named() -> None:
    config = _cluster()
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    fresh = json_line([_snapshot("aaaa1111", now - timedelta(days=3), 10), _snapshot("bbbb2222", now - timedelta(
        hours=20), 2048)])
    stale = json_line([_snapshot("cccc3333", now - timedelta(days=2), 5)])
    output = (f"== blog\n{fresh}\n== kutt\n{stale}\n== nextcloud\nnull\n== gitea\nFatal: wrong password\n"
              "error 1\n== website\n")
    listing = parse_listing(output)
    assert [s["short_id"] for s in listing["blog"]] == ["aaaa1111", "bbbb2222"]  # type: ignore[index]
    assert listing["nextcloud"] == [] and "exit status 1" in str(listing["gitea"])
    created = parse_created("created blog 2026-11-01T00:00:00Z\ncreated nextcloud 2026-12-05T10:00:00Z\n"
                            "created kutt 2026-11-01T00:00:00Z\n")
    found = {state.app: state for state in states(config, listing, created, now)}
    assert found["blog"].ok and found["blog"].snapshots == 2 and found["blog"].size == 2048
    assert "newest bbbb2222 20 h ago, 2.0 KiB" in found["blog"].detail
    assert not found["kutt"].ok and "late, its schedule '30 3 * * *' allows 26 h" in found["kutt"].detail
    # Nextcloud's backups began 2 h ago: its first snapshot is not due yet. Without a CronJob's age, none is late.
    assert found["nextcloud"].ok and "no snapshot yet: its backups began 2 h ago" in found["nextcloud"].detail
    assert not found["gitea"].ok and not found["website"].ok
    late = {s.app: s for s in states(config, {"nextcloud": []}, {}, now)}
    assert not late["nextcloud"].ok and late["nextcloud"].detail == "no snapshot yet (schedule '30 3 * * *')"


def json_line(snapshots: list[dict[str, Any]]) -> str:
    import json

    return json.dumps(snapshots)


def test_snapshot_times_with_nanoseconds_and_offsets() -> None:
    assert snapshot_time({"time": "2026-12-05T03:30:01.987654321+01:00"}) == datetime(2026, 12, 5, 2, 30, 1,
                                                                                     tzinfo=UTC)
    assert snapshot_time({"time": "2026-12-05T03:30:01Z"}) == datetime(2026, 12, 5, 3, 30, 1, tzinfo=UTC)


def test_restore_stops_the_app_restores_and_starts_it_again_without_secrets_in_the_command() -> None:
    config = _cluster()
    app = next(a for a in config.apps if a.name == "kutt")
    script = restore_script(app, config, "latest", "restore-1")
    assert script.index("--replicas=0") < script.index("kind: Job") < script.index("echo \"$state\"")
    assert "trap start_again EXIT" in script and "SNAPSHOT" in script
    for value in SECRET_VALUES.values():
        assert value not in script
    sent: list[tuple[str, str, float]] = []

    def run(host: str, command: str, timeout: float) -> tuple[bool, str]:
        sent.append((host, command, timeout))
        return True, "restored kutt from snapshot latest\nsucceeded\n"

    assert restore(config, "kutt", run) == "restored kutt from snapshot latest"
    assert sent[0][0] == config.hosts_in("k3s_servers")[0].name
    with pytest.raises(BackupError, match="'prometheus' is not a backed-up app"):
        restore(config, "prometheus", run)
    with pytest.raises(BackupError, match="not a snapshot ID"):
        restore(config, "kutt", run, snapshot="latest; rm -rf /")

    def failing(host: str, command: str, timeout: float) -> tuple[bool, str]:
        return True, "Fatal: no matching snapshot\nfailed\n"

    with pytest.raises(BackupError, match="no matching snapshot"):
        restore(config, "kutt", failing)


def test_a_restore_into_a_new_volume_deletes_the_old_claim_and_makes_the_manifests_one_first() -> None:
    config = _cluster()
    app = next(a for a in config.apps if a.name == "kutt")
    plain = restore_script(app, config, "latest", "restore-1")
    assert "delete pvc" not in plain
    script = restore_script(app, config, "latest", "restore-1", new_volume=True)
    claim = script[script.index("kind: PersistentVolumeClaim") - 40:]
    assert script.index("--replicas=0") < script.index("delete pvc kutt") < script.index(
        "kind: PersistentVolumeClaim") < script.index("kind: Job")
    assert "storage: 1Gi" in claim and "name: kutt" in claim

    def stuck(host: str, command: str, timeout: float) -> tuple[bool, str]:
        return True, ("its pod did not start within 300 s:\n  Warning  FailedScheduling  0/3 nodes are available: "
                      "3 node(s) had volume node affinity conflict.\nfailed\n")

    with pytest.raises(BackupError, match="restore into a new volume with --new-volume"):
        restore(config, "kutt", stuck)

def test_a_restore_into_a_new_volume_lets_go_of_every_pod_holding_the_claim_then_starts_the_app_again(
        tmp_path) -> None:
    """The script itself, run by bash against a recording ``k3s``: every pod that names the claim (the app's, the
    backups' finished ones: Kubernetes keeps a claim while any scheduled pod names it) is force-deleted, no other;
    the backup CronJob is suspended during the restore and put back as it was, and the app scaled back."""
    config = _cluster()
    app = next(a for a in config.apps if a.name == "kutt")
    script = restore_script(app, config, "latest", "restore-1", new_volume=True)
    calls = tmp_path / "calls"
    fake = tmp_path / "k3s"
    fake.write_text(f"""#!/bin/bash
echo "$*" >> {calls}
case "$*" in
  *"get deployment kutt"*) printf 2 ;;
  *"get pods -o jsonpath"*) printf 'kutt-7d9 kutt\\nbackup-29012-x cache kutt\\nother-1 data\\n' ;;
  *"get job restore-1"*) printf 1/ ;;
esac
""")
    fake.chmod(0o755)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert done.stdout.rstrip().endswith("succeeded"), done.stdout + done.stderr
    sent = calls.read_text().splitlines()
    deleted = [line.split()[5] for line in sent if line.startswith("kubectl -n app-kutt delete pod ")]
    assert deleted == ["kutt-7d9", "backup-29012-x"]
    assert all("--force --grace-period=0" in line for line in sent if " delete pod " in line)
    suspend = [i for i, line in enumerate(sent) if '"suspend":true' in line]
    order = [next(i for i, line in enumerate(sent) if marker in line)
             for marker in ("--replicas=0", "delete pod kutt-7d9", "delete pvc kutt", "apply -f -")]
    assert suspend and suspend[0] < order[0] and order == sorted(order)
    assert "scale deployment kutt --replicas=2" in sent[-2] and '"suspend":false' in sent[-1]
