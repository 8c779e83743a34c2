"""Command line: ``python -m portable_k3s check inventories/home.py`` (also installed as ``portable-k3s``).

``check`` loads an inventory with its group_data and validates all of it, offline: it never connects to
a host. Exit status 0 when the inventory is valid, 1 with one problem per line on stderr when it is not.

``render INVENTORY OUTDIR`` writes every manifest the cluster add-ons deploy would write, for review, offline:
Traefik's trusted entrance addresses are the ``--entrance-ip`` values, else a placeholder named after each entrance
host; secrets are never read, a placeholder naming the secret's key stands in for each.

``cloud-init INVENTORY --host NAME`` prints cloud-init user-data that joins a new k3s agent on its first boot, with a
single-use tailnet key and a k3s join token minted for it over SSH (see portable_k3s.cloud_init).

``doctor INVENTORY`` walks the path a request takes (public DNS, the entrance, SNI routing, headscale, the tailnet,
the ingress, k3s, the apps' backups) and prints one line per hop, failing ones first, with the likely fix (see
portable_k3s.doctor).

``settings`` prints every inventory key the library reads, from the settings registry, as the README's tables
(``--markdown``, the default) or as a JSON Schema of the group data for editors (``--schema``).

``backups INVENTORY`` lists each backed-up app's snapshots, their age and size, and which app is late;
``restore INVENTORY APP [--snapshot ID]`` restores an app's volume from its backup (see portable_k3s.backups).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from portable_k3s.config import ConfigError, load_inventory, validate_inventory

SECRETS_NOTE = (
    "note: secrets were checked for shape only; their env vars and files are checked when deploying"
)


def check(inventory_path: str, cwd: str | None) -> int:
    """Validate an inventory offline; print a summary or the problems."""
    try:
        inventory = load_inventory(inventory_path, cwd=cwd)
    except ConfigError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return 1
    except Exception as error:  # the inventory and group_data files are user code
        cause = getattr(error, "exception", error)  # pyinfra wraps errors raised in user files
        where = getattr(error, "filename", inventory_path)
        print(f"{where}: could not load the inventory: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    try:
        config = validate_inventory(inventory, require_secrets=False, cwd=cwd)
    except ConfigError as error:
        count = len(error.problems)
        print(f"{inventory_path}: {count} problem{'' if count == 1 else 's'}:", file=sys.stderr)
        print("\n".join(f"    {problem}" for problem in error.problems), file=sys.stderr)
        print(SECRETS_NOTE, file=sys.stderr)
        return 1
    groups = sorted({group for host in config.hosts.values() for group in host.groups})
    print(
        f"ok: {inventory_path}: {len(config.hosts)} hosts in groups {', '.join(groups)}; "
        f"{len(config.apps)} apps ({len(config.public_apps())} public)"
    )
    print(SECRETS_NOTE)
    return 0


def print_settings(schema: bool, readme: str | None) -> int:
    """Print the settings registry as Markdown tables or as a JSON Schema, or rewrite a README's tables."""
    import json

    from portable_k3s.settings import json_schema, markdown_tables, with_tables

    if readme:
        with open(readme, encoding="utf-8") as f:
            text = f.read()
        with open(readme, "w", encoding="utf-8") as f:
            f.write(with_tables(text))
        return 0
    print(json.dumps(json_schema(), indent=2) if schema else markdown_tables(), end="\n")
    return 0


def entrance_placeholder(host_name: str) -> str:
    """What ``render`` writes for an entrance's tailnet address when none is given (never a whole network)."""
    return f"ENTRANCE-TAILNET-IP-OF-{host_name}"


def secret_placeholder(key_path: str, reference: Any) -> str:
    """What ``render`` writes for a secret: its key, never its value."""
    return f"SECRET-FROM-{key_path}"


def render_inventory(inventory_path: str, outdir: str, entrance_ips: list[str] | None, cwd: str | None) -> int:
    """Validate an inventory offline and write its cluster manifests into ``outdir``."""
    import ipaddress

    from portable_k3s.config import ENTRANCE
    from portable_k3s.manifests import render_manifests

    try:
        config = validate_inventory(load_inventory(inventory_path, cwd=cwd), require_secrets=False, cwd=cwd)
    except ConfigError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return 1
    for ip in entrance_ips or []:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            print(f"--entrance-ip: {ip!r} is not an IPv4 address (expected an entrance's tailnet IPv4, like "
                  "100.64.0.1)", file=sys.stderr)
            return 2
    if entrance_ips:
        trusted = list(entrance_ips)
    else:
        trusted = [entrance_placeholder(host.name) for host in config.hosts_in(ENTRANCE)]
        print("note: no --entrance-ip: Traefik's trusted addresses are placeholders "
              f"({', '.join(trusted)}); the deploy reads the real ones from tailscale on each entrance")
    manifests = render_manifests(config, trusted, secret_placeholder)
    os.makedirs(outdir, exist_ok=True)
    for name, text in manifests.items():
        with open(os.path.join(outdir, name), "w", encoding="utf-8") as out:
            out.write(text)
    print(f"ok: {len(manifests)} manifests written to {outdir} (secrets are placeholders; nothing was contacted)")
    return 0


def doctor(inventory_path: str, cwd: str | None, resolve: list[str], cafile: str | None, timeout: float) -> int:
    """Validate the inventory offline, then check every hop of the request path."""
    from portable_k3s.doctor import NetworkProbe, diagnose, print_report

    resolved: dict[str, list[str]] = {}
    for item in resolve:
        name, _, address = item.partition("=")
        if not name or not _is_ipv4(address):
            print(f"--resolve: {item!r} (expected NAME=IPV4, e.g. blog.example.org=203.0.113.10)", file=sys.stderr)
            return 2
        resolved.setdefault(name, []).append(address)
    try:
        inventory = load_inventory(inventory_path, cwd=cwd)
        config = validate_inventory(inventory, require_secrets=False, cwd=cwd)
    except ConfigError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return 1
    probe = NetworkProbe(inventory, timeout=timeout, cafile=cafile)
    try:
        return print_report(diagnose(config, probe, resolved))
    finally:
        probe.close()


def cloud_init(inventory_path: str, cwd: str | None, name: str, expires: str, output: str | None) -> int:
    """Validate the inventory, mint ``name``'s join credentials and write its cloud-init user-data."""
    from portable_k3s.cloud_init import (
        CloudInitError,
        check_expires,
        header,
        joinable,
        mint_credentials,
        render_user_data,
    )

    try:
        seconds = check_expires(expires)
        inventory = load_inventory(inventory_path, cwd=cwd)
        config = validate_inventory(inventory, require_secrets=False, cwd=cwd)
        groups = joinable(config, name)
    except CloudInitError as error:
        print(error, file=sys.stderr)
        return 2
    except ConfigError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return 1
    try:
        credentials = mint_credentials(inventory, config, name, expires)
    except (CloudInitError, ConfigError) as error:
        print(f"cloud-init: {error}", file=sys.stderr)
        return 1
    data = inventory.get_host(name).data.dict()
    text = render_user_data(name, groups, data, credentials,
                            header(name, seconds, static_token=bool(data.get("k3s_token"))))
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    where = output or "stdout"
    print(f"ok: user-data for {name} ({', '.join(groups)}) written to {where}: it joins with a single-use "
          f"tailnet key and a k3s join token that expire in {expires}; it holds them in clear: keep it private",
          file=sys.stderr)
    return 0


def _cluster_for_backups(inventory_path: str, cwd: str | None) -> tuple[Any, Any] | int:
    """The validated inventory and an SSH probe, or an exit status when the inventory has no app backups."""
    from portable_k3s.doctor import NetworkProbe

    try:
        inventory = load_inventory(inventory_path, cwd=cwd)
        config = validate_inventory(inventory, require_secrets=False, cwd=cwd)
    except ConfigError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return 1
    if config.addons.backups is None or not config.hosts_in("k3s_servers"):
        print(f"{inventory_path}: no app backups (set app_backup_s3, app_backup_password, s3_access_key and "
              "s3_secret_key, and have a k3s_servers group)", file=sys.stderr)
        return 1
    return config, NetworkProbe(inventory, timeout=10.0)


def backups(inventory_path: str, cwd: str | None) -> int:
    """List each backed-up app's snapshots; exit status 1 when an app has none as new as its schedule allows."""
    from portable_k3s.backups import BackupError, list_backups

    found = _cluster_for_backups(inventory_path, cwd)
    if isinstance(found, int):
        return found
    config, probe = found
    try:
        app_states = list_backups(config, probe.run)
    except BackupError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        probe.close()
    for state in app_states:
        print(f"{'ok  ' if state.ok else 'LATE'}  {state.app}: {state.detail}")
    late = [state.app for state in app_states if not state.ok]
    print(f"backups: {len(app_states)} apps, {len(late)} late{': ' + ', '.join(late) if late else ''}")
    return 1 if late else 0


def restore(inventory_path: str, cwd: str | None, app: str, snapshot: str, new_volume: bool = False) -> int:
    """Restore an app's volume from a snapshot: the app is stopped meanwhile and started again after."""
    from portable_k3s.backups import BackupError
    from portable_k3s.backups import restore as restore_app

    found = _cluster_for_backups(inventory_path, cwd)
    if isinstance(found, int):
        return found
    config, probe = found
    try:
        print(restore_app(config, app, probe.run, snapshot, new_volume))
    except BackupError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        probe.close()
    print(f"ok: {app} restored from {snapshot} and started again")
    return 0


def _is_ipv4(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _inventory_arguments(parser: argparse.ArgumentParser) -> None:
    """The INVENTORY argument and ``--cwd``, which every command takes."""
    parser.add_argument("inventory", metavar="INVENTORY", help="pyinfra inventory file, e.g. inventories/home.py")
    parser.add_argument("--cwd", metavar="DIR", default=None,
                        help="project directory whose group_data/ applies (default: the current directory)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="portable-k3s",
        description="Tools for a portable k3s cluster deployed with pyinfra.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check_parser = commands.add_parser(
        "check",
        help="validate an inventory and its group_data offline (never connects to a host)",
        description="Validate an inventory and its group_data offline; never connects to a host.",
    )
    check_parser.add_argument(
        "inventory", metavar="INVENTORY", help="pyinfra inventory file, e.g. inventories/home.py"
    )
    check_parser.add_argument(
        "--cwd",
        metavar="DIR",
        default=None,
        help="project directory whose group_data/ applies (default: the current directory)",
    )

    render_parser = commands.add_parser(
        "render",
        help="write every cluster manifest of an inventory into a directory, for review (never connects to a host)",
        description="Write the manifests the cluster add-ons deploy would put in k3s's auto-deploy directory.",
    )
    render_parser.add_argument("inventory", metavar="INVENTORY", help="pyinfra inventory file")
    render_parser.add_argument("outdir", metavar="OUTDIR", help="directory to write the manifests into")
    render_parser.add_argument(
        "--entrance-ip", action="append", metavar="IP", default=None,
        help="an entrance's tailnet IPv4 for Traefik's trusted addresses (repeat for several entrances); "
        "default: a placeholder per entrance host",
    )
    render_parser.add_argument("--cwd", metavar="DIR", default=None, help="project directory whose group_data/ applies")

    doctor_parser = commands.add_parser(
        "doctor",
        help="walk the path a request takes and name the broken hop (connects to the hosts over SSH)",
        description="Check public DNS, the entrances, SNI routing, headscale, the tailnet, the ingress and k3s; "
        "one line per hop, failing ones first, with the likely fix. Exit status 1 when a hop fails.",
    )
    _inventory_arguments(doctor_parser)
    doctor_parser.add_argument(
        "--resolve", action="append", default=[], metavar="NAME=IP",
        help="use IP for NAME instead of asking DNS (repeatable), e.g. before the DNS records exist",
    )
    doctor_parser.add_argument("--ca", metavar="FILE", default=None,
                               help="also trust this CA when checking the apps' certificates (e.g. a staging CA)")
    doctor_parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                               help="per connection (default 5)")

    cloud_parser = commands.add_parser(
        "cloud-init",
        help="print cloud-init user-data that joins a new k3s agent (e.g. a cloud VM) on its first boot",
        description="Mint a single-use tailnet key on headscale and a k3s join token on the first server (both "
        "expire after --expires; over SSH) and print #cloud-config user-data that installs tailscale and k3s "
        "as deploy.py would and joins the host on its first boot.",
    )
    cloud_parser.add_argument("inventory", metavar="INVENTORY", help="pyinfra inventory file")
    cloud_parser.add_argument("--host", required=True, metavar="NAME",
                              help="the inventory host the new machine becomes (in k3s_agents or exit_nodes)")
    cloud_parser.add_argument("--expires", default="1h", metavar="DURATION",
                              help="how long the machine has to boot and join, e.g. 30m or 2h (default 1h)")
    cloud_parser.add_argument("-o", "--output", metavar="FILE", default=None,
                              help="write the user-data to FILE (mode 0600) instead of stdout")
    cloud_parser.add_argument("--cwd", metavar="DIR", default=None, help="project directory whose group_data/ applies")

    backups_parser = commands.add_parser(
        "backups",
        help="list each app's backups (snapshots, age, size) and say which are late (connects to the first server)",
        description="List the snapshots of every backed-up app's restic repository, with the newest one's age and "
        "size. Exit status 1 when an app has no snapshot as new as its schedule allows.",
    )
    _inventory_arguments(backups_parser)

    restore_parser = commands.add_parser(
        "restore",
        help="restore an app's volume from its backup (the newest, or --snapshot ID); the app stops meanwhile",
        description="Stop the app, empty its volume, restore it from a snapshot of its restic repository and start "
        "the app again. Works on the same cluster and on a rebuilt one (deploy first, so the app and its volume "
        "exist).",
    )
    _inventory_arguments(restore_parser)
    restore_parser.add_argument("app", metavar="APP", help="the app's name in the catalog")
    restore_parser.add_argument("--snapshot", default="latest", metavar="ID",
                                help="a snapshot ID as `portable-k3s backups` shows it (default: the newest)")
    restore_parser.add_argument("--new-volume", action="store_true",
                                help="delete the app's volume and restore into a new one (its node is gone)")

    settings_parser = commands.add_parser(
        "settings",
        help="print every inventory key (the settings registry) as Markdown tables or as a JSON Schema",
        description="Every data key the library reads, with its scope, the hosts that read it, its default and "
        "meaning (--markdown, the README's tables) or as a JSON Schema of the group data (--schema), offline.",
    )
    settings_parser.add_argument("--schema", action="store_true", help="a JSON Schema instead of Markdown tables")
    settings_parser.add_argument("--readme", metavar="FILE", default=None,
                                 help="rewrite the tables between the settings markers of FILE (the README) instead")

    args = parser.parse_args(argv)
    if args.command == "settings":
        return print_settings(args.schema, args.readme)
    if args.command == "check":
        return check(args.inventory, args.cwd)
    if args.command == "render":
        return render_inventory(args.inventory, args.outdir, args.entrance_ip, args.cwd)
    if args.command == "doctor":
        return doctor(args.inventory, args.cwd, args.resolve, args.ca, args.timeout)
    if args.command == "cloud-init":
        return cloud_init(args.inventory, args.cwd, args.host, args.expires, args.output)
    if args.command == "backups":
        return backups(args.inventory, args.cwd)
    if args.command == "restore":
        return restore(args.inventory, args.cwd, args.app, args.snapshot, args.new_volume)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
