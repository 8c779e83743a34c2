"""Operations on a headscale server (run on the headscale host, through its local CLI)."""

from __future__ import annotations

import json
import os
import tarfile
from io import StringIO

from pyinfra import host
from pyinfra.api import (
    HiddenValue,
    Host,
    OperationError,
    OperationValueError,
    QuoteString,
    State,
    StringCommand,
)
from pyinfra.api.command import FileUploadCommand, FunctionCommand

from ..facts.files import FileStates
from ..facts.headscale import Headscale, parse_nodes
from .cross_host import run_on
from .files import content
from .util import escalation, host_operation, shared_fact

PREAUTH_KEY_EXPIRY = "15m"
EXTRA_RECORDS = "/var/lib/headscale/extra-records.json"
DATABASE = "/var/lib/headscale/db.sqlite"
# What a backup holds for headscale's state directory: the first two are required to restore a tailnet.
BACKUP_STATE = ("db.sqlite", "noise_private.key", "derp_server_private.key", "extra-records.json")
RESTORE_ARCHIVE = "/var/lib/headscale/.portable-k3s-restore.tar.gz"


def backup_problems(path: str) -> list[str]:
    """What is wrong with a headscale backup archive on this machine ([] when it can be restored)."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            names = {os.path.normpath(name) for name in archive.getnames()}
    except FileNotFoundError:
        return [f"{path}: no such file"]
    except (tarfile.TarError, OSError) as exc:
        return [f"{path}: not a gzip'd tar archive ({exc})"]
    missing = [name for name in BACKUP_STATE[:2] if name not in names]
    return [f"{path}: has no {', '.join(missing)}"] if missing else []


@host_operation(changes=(FileStates,))
def restored(archive: str):
    """
    Restore headscale's state (database, private keys, MagicDNS records) from a backup archive made by the
    headscale deploy's backup timer, on a headscale host that has no database yet: the existing nodes keep their
    registrations, with no re-join. Call it before headscale first starts. A host that has a database is left alone
    (restoring over it would replace the tailnet: remove the database first if that is what you want).

    + archive: the backup archive on the deploying machine (``headscale-<time>.tar.gz``)

    **Example:**

    .. code:: python

        headscale.restored(name="Restore headscale", archive="backups/headscale-20261126T030000Z.tar.gz")
    """
    problems = backup_problems(archive)
    if problems:
        raise OperationValueError(f"archive: {'; '.join(problems)} (expected a backup made by the headscale deploy)")
    if shared_fact(host, FileStates, paths=(DATABASE,)).get(DATABASE) is not None:
        host.noop(f"headscale already has a database ({DATABASE}): not restored over it")
        return
    yield StringCommand("install -m 0600 -o root -g root /dev/null", RESTORE_ARCHIVE)
    yield FileUploadCommand(archive, RESTORE_ARCHIVE)
    yield StringCommand(
        'work=$(mktemp -d) || exit 1; rc=0; tar -xzf', RESTORE_ARCHIVE, '-C "$work" --no-same-owner || rc=1;',
        'if [ $rc = 0 ]; then for file in', *BACKUP_STATE, '; do if [ -e "$work/$file" ]; then',
        'install -m 0600 -o headscale -g headscale "$work/$file" "/var/lib/headscale/$file" || rc=1; fi; done; fi;',
        'rm -rf "$work"', RESTORE_ARCHIVE, "; exit $rc",
    )


@host_operation(changes=(Headscale,))
def users(names: list[str]):
    """
    Create the headscale users that do not exist yet (existing users are kept; none are deleted).

    + names: user names

    **Example:**

    .. code:: python

        headscale.users(name="headscale users", names=["admin"])
    """
    for name in names:
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise OperationValueError(f"names: {name!r} is not a valid user name")
    existing = shared_fact(host, Headscale)["users"]
    missing = [name for name in names if name not in existing]
    if not missing:
        host.noop(f"headscale users exist: {', '.join(names) or 'none wanted'}")
        return
    for name in missing:
        yield StringCommand("headscale users create", QuoteString(name), ">/dev/null")


def mint_preauth_key(headscale_host: Host, tags: list[str], expiration: str = PREAUTH_KEY_EXPIRY) -> HiddenValue:
    """Mint a single-use, short-lived, tagged pre-auth key on ``headscale_host`` and return it hidden.

    Runs ``headscale preauthkeys create`` there over the already open SSH connection; the key is read from
    its JSON output, which is never printed, and exists only in memory here.
    """
    if not tags or not all(t.startswith("tag:") for t in tags):
        raise OperationValueError(f"tags: {tags!r} (expected tag:NAME values)")
    command = StringCommand(
        "headscale preauthkeys create --expiration", QuoteString(expiration),
        "--tags", QuoteString(",".join(tags)), "-o json",
    )
    stdout = run_on(headscale_host, command, "minting a pre-auth key",
                    when_lost=f"; this node joins at the next run once {headscale_host.name} is back")
    try:
        key = json.loads(stdout)["key"]
    except (ValueError, KeyError, TypeError) as exc:
        raise OperationError(f"headscale on {headscale_host.name} returned no pre-auth key") from exc
    return HiddenValue(key)


def expire_preauth_key(headscale_host: Host, key: HiddenValue) -> bool:
    """Expire ``key`` on ``headscale_host`` (found by the prefix ``headscale preauthkeys list`` shows of it);
    False when headscale does not list it. Nothing of the key is printed."""
    listed = json.loads(run_on(headscale_host, "headscale preauthkeys list -o json", "listing pre-auth keys")
                        or "[]") or []
    secret = key.unmask()
    match = next((k for k in listed if str(k.get("key", "")).rstrip("*") and
                  secret.startswith(str(k["key"]).rstrip("*"))), None)
    if match is None:
        return False
    run_on(headscale_host, StringCommand("headscale preauthkeys expire --id", str(int(match["id"]))),
           "expiring a pre-auth key")
    return True


def records_text(names: list[str], address: str) -> str:
    """The extra-records JSON headscale reads: every name an A record to ``address``."""
    records = [{"name": name, "type": "A", "value": address} for name in sorted(names)]
    return json.dumps(records, indent=2) + "\n"


@host_operation()
def dns_records(names: list[str], address: str | None = None, node: str | None = None, path: str = EXTRA_RECORDS):
    """
    Make MagicDNS resolve ``names`` (inside the tailnet only) to ``address``, or to the tailnet IPv4 of the
    node named ``node``. headscale reads the file on change: no restart. When that node has not joined yet
    at planning time (a first run), the records are written at execution time, once it has.

    + names: DNS names (e.g. the private apps' hostnames)
    + address: the IPv4 they resolve to
    + node: else, the tailnet node whose address they resolve to
    + path: headscale's ``dns.extra_records_path``

    **Example:**

    .. code:: python

        headscale.dns_records(name="Private apps", names=["pass.example.org"], node="master")
    """
    if (address is None) == (node is None):
        raise OperationValueError("give exactly one of address or node")

    if address is None:
        address = next((n["ipv4"] for n in shared_fact(host, Headscale)["nodes"] if n["name"] == node), None)
    if address is not None:
        yield from content._inner(
            path=path, text=records_text(names, address), mode="0640", user="headscale", group="headscale",
        )
        return

    sudo = escalation(host, use_current_op=True)

    def write_records(state: State, host: Host) -> None:  # pyinfra passes state and host by these names
        ok, output = host.run_shell_command("headscale nodes list -o json", print_output=False, **sudo)
        nodes = parse_nodes(output.stdout) if ok else []
        ipv4 = next((n["ipv4"] for n in nodes if n["name"] == node and n["ipv4"]), None)
        if ipv4 is None:
            raise OperationError(f"node {node!r} is not in the tailnet: cannot point MagicDNS records at it")
        staged = f"{path}.portable-k3s-new"
        if not host.put_file(StringIO(records_text(names, ipv4)), staged, print_output=False, **sudo):
            raise OSError(f"writing {staged} failed")
        ok, output = host.run_shell_command(
            StringCommand(
                "chown headscale:headscale", QuoteString(staged), "&& chmod 0640", QuoteString(staged),
                "&& mv -f", QuoteString(staged), QuoteString(path),
            ),
            **sudo,
        )
        if not ok:
            raise OperationError(f"installing {path} failed: {output.stderr}")

    yield FunctionCommand(write_records, (), {})
