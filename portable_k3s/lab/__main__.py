"""``python -m portable_k3s.lab up|down|move|status|ssh|serve`` — manage the local lab."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .core import Lab, LabConfig, LabError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m portable_k3s.lab", description=__doc__)
    parser.add_argument("--state-dir", help="where the lab keeps its state (env PORTABLE_K3S_LAB_STATE_DIR)")
    parser.add_argument("--cache-dir", help="base image and artifact cache (env PORTABLE_K3S_CACHE)")
    parser.add_argument("--cloud-bridge", help="bridge of the cloud site (default pk3slab-cloud)")
    parser.add_argument("--home-bridge", help="bridge of the home site (default pk3slab-home)")
    parser.add_argument("--cloud-subnet", help="subnet of the cloud site (default 10.231.1.0/24)")
    parser.add_argument("--home-subnet", help="subnet of the home site (default 10.231.2.0/24)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the base image if needed, boot the hosts, wait for SSH")
    up.add_argument("--hosts", type=int, default=4, help="number of hosts: h1 on the cloud site, the rest at home")
    down = sub.add_parser("down", help="stop and remove everything (safe to run twice)")
    down.add_argument("--keep-state", action="store_true",
                      help="keep the hosts' disks and identity for the next `up` (e.g. on a new --home-subnet)")
    move = sub.add_parser("move", help="move house: reboot the home site on a new subnet behind a new NAT address")
    move.add_argument("--to", required=True, metavar="SUBNET", help="the home site's new subnet, e.g. 10.231.3.0/24")
    move.add_argument("--public-index", type=int, default=2, metavar="N",
                      help="the home NAT's new address: cloud subnet + N (1-9; default 2)")
    status = sub.add_parser("status", help="list the hosts and whether they run")
    status.add_argument("--json", action="store_true")
    serve = sub.add_parser("serve", help="after a deploy: certificates from the lab CA for the apps' Ingresses, a "
                           "first page for the static apps, and the command that fetches one through the entrance")
    serve.add_argument("--catalog", default="group_data/all.py", help="the app catalog (default group_data/all.py)")
    ssh = sub.add_parser("ssh", help="open a shell (or run a command) on a host")
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        lab = Lab(LabConfig.from_env(
            state_dir=args.state_dir, cache_dir=args.cache_dir, cloud_bridge=args.cloud_bridge,
            home_bridge=args.home_bridge, cloud_subnet=args.cloud_subnet, home_subnet=args.home_subnet,
        ))
        if args.command == "up":
            for host in lab.up(args.hosts):
                print(f"{host.name}\t{host.site}\t{host.address}\t{','.join(host.groups)}")
            from .s3 import start_s3  # noqa: PLC0415 - builds the S3 server on first use

            print(f"S3 (the off-site store of the lab's backups): {start_s3(lab)}")
            print(f"ssh: python -m portable_k3s.lab ssh h1   (or ssh -F {lab.ssh_config} h1)")
        elif args.command == "move":
            for host in lab.move_home(args.to, args.public_index):
                print(f"{host.name}\t{host.site}\t{host.address}\t{','.join(host.groups)}")
        elif args.command == "down":
            lab.down(keep_state=args.keep_state)
        elif args.command == "status":
            rows = lab.status()
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print(f"no lab at {lab.state_dir}")
            for row in [] if args.json else rows:
                state = "running" if row["running"] else "stopped"
                print(f"{row['name']}\t{row['site']}\t{row['address']}\t{state}\tssh={'up' if row['ssh'] else 'down'}")
        elif args.command == "serve":
            from .apps import fetch_command, public_static_hostnames, serve_apps  # noqa: PLC0415 - needs cryptography

            serve_apps(lab)
            for hostname in public_static_hostnames(args.catalog)[:1]:
                print(f"The public app {hostname}, through the entrance as from the internet:")
                print(f"  {fetch_command(lab, hostname)}")
        elif args.command == "ssh":
            cmd = ["ssh", "-F", str(lab.ssh_config), args.host, *args.cmd]
            os.execvp("ssh", cmd)  # noqa: S606 - hands the terminal to ssh
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
