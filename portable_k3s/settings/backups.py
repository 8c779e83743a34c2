"""Settings of the backups: headscale's archives, the apps' restic repositories, and the S3 store they share."""

from __future__ import annotations

import re
from typing import Any

from ..schedule import cron_problem
from .core import (
    ALL,
    Check,
    Setting,
    boolean,
    custom,
    int_range_problems,
    integer,
    optional,
    secret,
    show,
    string,
    wrong_type,
)

BACKUP_KEEP = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
CRON_EXPECTED = "a cron schedule like '30 3 * * *' (minute hour day-of-month month day-of-week) or @daily"
HEADSCALE = "headscale"
S3_KEYS = ("endpoint", "bucket", "region", "folder", "insecure")


def s3_problems(value: Any, bucket: str = "etcd") -> Check:
    """An S3 location: ``{"endpoint", "bucket", "region", "folder", "insecure"}``, or None."""
    if value is None:
        return []
    shape = (f'{{"endpoint": "s3.example.org", "bucket": "{bucket}", "region": …, "folder": …, "insecure": …}} '
             "or None")
    if not isinstance(value, dict):
        return [(wrong_type(value), shape)]
    problems: Check = []
    endpoint = value.get("endpoint", "")
    if not isinstance(endpoint, str) or "://" in endpoint:
        problems.append((f"endpoint {show(endpoint)} is not a host name", shape + " (no https://)"))
    elif endpoint and not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", endpoint):
        problems.append((f"endpoint {show(endpoint)} is not a host name", "a host[:port] like s3.example.org"))
    unknown = sorted(set(value) - set(S3_KEYS), key=str)
    if unknown:
        problems.append((f"unknown keys {unknown}", shape))
    for key in ("endpoint", "bucket"):
        if not isinstance(value.get(key), str) or not value.get(key):
            problems.append((f"{key} is missing", shape))
    for key in ("bucket", "region", "folder"):
        item = value.get(key)
        if isinstance(item, str) and item and not re.fullmatch(r"[A-Za-z0-9._/-]+", item):
            problems.append((f"{key} {show(item)} is not a name", "letters, digits and . _ / -"))
        elif key != "bucket" and item is not None and not isinstance(item, str):
            problems.append((f"{key}: {wrong_type(item)}", "a string"))
    if "insecure" in value and not isinstance(value["insecure"], bool):
        problems.append((f"insecure {show(value['insecure'])} is not True or False",
                         "True (plain http, e.g. a store on the tailnet) or False (https)"))
    return problems


def s3_location(bucket: str) -> Any:
    return custom(lambda value: s3_problems(value, bucket), {"anyOf": [{"type": "null"}, {
        "type": "object", "properties": {"endpoint": {"type": "string"}, "bucket": {"type": "string"},
                                         "region": {"type": "string"}, "folder": {"type": "string"},
                                         "insecure": {"type": "boolean"}},
        "required": ["endpoint", "bucket"], "additionalProperties": False}]})


def cron(expected: str = CRON_EXPECTED) -> Any:
    def check(value: Any) -> Check:
        wrong = cron_problem(value)
        return [(f"{show(value)}: {wrong}", expected)] if wrong else []

    return custom(check, {"type": "string"})


def _check_keep(value: Any) -> Check:
    expected = ('snapshots to keep per period, like {"daily": 7, "weekly": 4, "monthly": 6} '
                f'({", ".join(BACKUP_KEEP)})')
    if not isinstance(value, dict):
        return [(wrong_type(value), expected)]
    if not value:
        return [("keeps nothing (every snapshot would be removed)", expected)]
    found: Check = []
    for period, count in value.items():
        if period not in BACKUP_KEEP:
            found.append((f".{period}", "is not a period", f"one of {', '.join(BACKUP_KEEP)}"))
        found += [(f".{period}", problem, wanted)
                  for problem, wanted in int_range_problems(count, 1, 10000, "a number of snapshots, 1-10000")]
    return found


SETTINGS: tuple[Setting, ...] = (
    secret("s3_access_key", "the S3 bucket's access key (a secret reference), for `k3s_etcd_s3`, "
           "`headscale_backup_s3` and `app_backup_s3`", read_on="k3s servers, headscale"),
    secret("s3_secret_key", "the S3 bucket's secret key (a secret reference), for the same",
           read_on="k3s servers, headscale"),
    Setting("headscale_backup", boolean(), "back up headscale's database and keys on a timer", True,
            read_on=HEADSCALE),
    Setting("headscale_backup_dir", string(r"(?!.*\.\.)/[A-Za-z0-9._/-]+", "absolute path",
                                           "a directory on the headscale host: /var/backups/headscale"),
            "where the archives are kept on the headscale host (copy them off the host too)",
            "/var/backups/headscale", read_on=HEADSCALE),
    Setting("headscale_backup_keep", integer(1, 1000, "a number of archives 1-1000"), "archives kept (the newest)",
            14, read_on=HEADSCALE),
    Setting("headscale_backup_schedule", string(r"[A-Za-z0-9 *:,./~-]+", "calendar expression", "a systemd "
                                                "OnCalendar= value, like daily or *-*-* 03:00"),
            "when the backup runs (systemd `OnCalendar=`)", "daily", read_on=HEADSCALE),
    Setting("headscale_backup_s3", s3_location("backups"),
            '`{"endpoint": "s3.example.org", "bucket", "region", "folder", "insecure"}`: each archive also to S3 '
            "(AWS Signature V4 with `s3_access_key` / `s3_secret_key`); `insecure`: plain http", None,
            read_on=HEADSCALE),
    Setting("headscale_restore", optional(string(r".*\S.*", "path", "None, or the path of a backup archive made by "
                                                 "the headscale deploy (headscale-….tar.gz)")),
            "a backup archive (path on the deploying machine) restored onto a headscale host with no database", None,
            read_on=HEADSCALE),
    Setting("app_backup_s3", s3_location("backups"),
            '`{"endpoint": "s3.example.org", "bucket", "region", "folder", "insecure"}`: every deployed app\'s volume '
            "is backed up there with restic, one encrypted repository per app (`FOLDER/APP`); needs "
            '`app_backup_password`, `s3_access_key` and `s3_secret_key` (see "Backing up and restoring apps")', None,
            ALL, "first server"),
    secret("app_backup_password", "the password that encrypts the apps' restic repositories (a secret reference): "
           "without it the backups cannot be read, keep a copy off the cluster", read_on="first server"),
    Setting("app_backup_schedule", cron(), "when the apps' backups run (cron, five fields or `@daily`…, in the k3s "
            "server's time zone; an app's `backup_schedule` overrides it)", "30 3 * * *", ALL, "first server"),
    Setting("app_backup_keep", custom(_check_keep, {"type": "object", "properties": {
        period: {"type": "integer", "minimum": 1, "maximum": 10000} for period in BACKUP_KEEP},
        "additionalProperties": False, "minProperties": 1}),
        "the snapshots kept per period (" + ", ".join(f"`{p}`" for p in BACKUP_KEEP) + "; `restic forget --keep-*`)",
        {"daily": 7, "weekly": 4, "monthly": 6}, ALL, "first server"),
)
