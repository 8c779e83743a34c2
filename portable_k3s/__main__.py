"""Command line: ``python -m portable_k3s check inventories/home.py`` (also installed as ``portable-k3s``).

``check`` loads an inventory with its group_data and validates all of it, offline: it never connects to
a host. Exit status 0 when the inventory is valid, 1 with one problem per line on stderr when it is not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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

    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.inventory, args.cwd)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
