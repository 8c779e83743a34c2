"""The configuration model (portable_k3s.config) and ``python -m portable_k3s check``.

Bad inventories live in ``data/inventories/<case>/`` (inventory.py + group_data/), each with an
``expect.txt`` listing what the problem lines must contain; the tests below are driven by those files.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Config, HiddenValue, Inventory, State
from pyinfra.context import ctx_inventory, ctx_state

from portable_k3s import config as config_mod
from portable_k3s.config import (
    KNOWN_GROUPS,
    SECRET_KEYS,
    App,
    ClusterConfig,
    ConfigError,
    load_inventory,
    resolve_secret,
    validate_inventory,
    validate_state,
)
from portable_k3s.versions import VERSIONS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy.py"
CASES_DIR = Path(__file__).resolve().parent / "data" / "inventories"
CASES = sorted(path for path in CASES_DIR.iterdir() if path.is_dir())

# <host or group>.<key path>: <problem> (expected …)
PROBLEM_RE = re.compile(r"^(?P<where>\S+?): (?P<problem>.+) \(expected (?P<expected>.+)\)$")


def expected_lines(case: Path) -> list[str]:
    return [line for line in (case / "expect.txt").read_text().splitlines() if line.strip()]


def assert_problem_format(lines: list[str], names: set[str]) -> None:
    """Every line is ``<where>: <problem> (expected …)`` and ``where`` starts with a host or group name."""
    assert lines
    for line in lines:
        match = PROBLEM_RE.match(line)
        assert match, f"not in the problem format: {line!r}"
        head = match.group("where").split(".", 1)[0].split("[", 1)[0]
        assert head in names | {"all", "--data"}, f"{line!r} does not start with a host or group name"


def run_check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "portable_k3s", "check", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# In-memory inventories
#

DOMAIN = "example.org"


def good_data() -> dict[str, Any]:
    return {
        "domain": DOMAIN,
        "headscale_url": f"https://headscale.{DOMAIN}",
        "tailnet_domain": f"tailnet.{DOMAIN}",
        "base_packages": ["ca-certificates", "curl", "libnginx-mod-stream", "g++"],
        "ntp_servers": ["0.debian.pool.ntp.org", "192.0.2.123", "2001:db8::1"],
        "ssh_permit_root_login": "prohibit-password",
        "apps": [
            {"name": "website", "hostname": DOMAIN, "public": True},
            {"name": "blog", "hostname": f"blog.{DOMAIN}", "public": True},
            {"name": "vaultwarden", "hostname": f"pass.{DOMAIN}", "public": False},
            {"name": "backup"},
            {"name": "minecraft", "hostname": f"mc.{DOMAIN}", "public": True, "tcp_port": 25565,
             "proxy_protocol": False},
        ],
    }


def good_groups() -> dict[str, tuple[list[Any], dict[str, Any]]]:
    return {
        "headscale": ([("cloud", {"ssh_hostname": "203.0.113.10"})], {}),
        "entrance": (["cloud"], {}),
        "k3s_servers": ([("master", {"hardware": "fanless-pc", "external_ssd": "/dev/sdb"})], {}),
        "k3s_agents": (
            [
                ("t420", {"hardware": "thinkpad-t420", "external_ssd": "/dev/disk/by-id/ata-SSD_123"}),
                ("t410", {"hardware": "thinkpad-t410", "external_ssd": "/dev/nvme0n1"}),
            ],
            {},
        ),
        "exit_nodes": ([("pi", {"hardware": "raspberry-pi"})], {}),
        "home": (["cloud", "master", "t420", "t410", "pi"], {}),
    }


def make_inventory(
    data: dict[str, Any] | None = None,
    groups: dict[str, tuple[list[Any], dict[str, Any]]] | None = None,
    override: dict[str, Any] | None = None,
) -> Inventory:
    groups = good_groups() if groups is None else groups
    names: list[str] = []
    for hosts, _data in groups.values():
        for host in hosts:
            name = host[0] if isinstance(host, tuple) else host
            if name not in names:
                names.append(name)
    return Inventory((names, good_data() if data is None else data), override_data=override, **groups)


def problems_of(inventory: Inventory, **kwargs: Any) -> list[str]:
    try:
        validate_inventory(inventory, **kwargs)
    except ConfigError as error:
        return error.problems
    return []


def names_of(inventory: Inventory) -> set[str]:
    hosts = {host.name for host in inventory}
    return hosts | set(inventory.groups) | set(inventory.group_data) | set(KNOWN_GROUPS)


def with_data(**changes: Any) -> Inventory:
    data = good_data()
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return make_inventory(data=data)


def with_app(index: int, **changes: Any) -> Inventory:
    data = good_data()
    app = dict(data["apps"][index])
    for key, value in changes.items():
        if value is None:
            app.pop(key, None)
        else:
            app[key] = value
    data["apps"][index] = app
    return make_inventory(data=data)


def with_apps(*apps: Any) -> Inventory:
    data = good_data()
    data["apps"] = list(apps)
    return make_inventory(data=data)


def with_groups(**changes: Any) -> Inventory:
    groups = good_groups()
    for name, value in changes.items():
        if value is None:
            groups.pop(name, None)
        else:
            groups[name] = value
    return make_inventory(groups=groups)


def with_host(group: str, index: int, name: str, data: dict[str, Any]) -> Inventory:
    groups = good_groups()
    hosts = list(groups[group][0])
    old = hosts[index][0] if isinstance(hosts[index], tuple) else hosts[index]
    hosts[index] = (name, data)
    groups[group] = (hosts, groups[group][1])
    groups["home"] = ([name if host == old else host for host in groups["home"][0]], {})
    return make_inventory(groups=groups)


def test_good_data_passes() -> None:
    config = validate_inventory(make_inventory())
    assert isinstance(config, ClusterConfig)
    assert config.domain == DOMAIN
    assert config.versions == VERSIONS
    assert [app.name for app in config.public_apps()] == ["website", "blog", "minecraft"]
    assert [app.name for app in config.private_apps()] == ["vaultwarden", "backup"]
    assert config.apps[4] == App(
        "minecraft", f"mc.{DOMAIN}", public=True, tcp_port=25565, proxy_protocol=False
    )
    assert config.apps[3] == App("backup")
    assert [host.name for host in config.hosts_in("k3s_agents")] == ["t420", "t410"]
    assert config.hosts["master"].external_ssd == "/dev/sdb"
    assert config.hosts["master"].hardware == "fanless-pc"
    assert config.hosts["cloud"].groups == frozenset({"headscale", "entrance", "home"})
    assert config.hosts["pi"].hostname == "pi"
    assert config.hosts["pi"].external_ssd is None
    assert config.base_packages == good_data()["base_packages"]
    assert config.ssh_permit_root_login == "prohibit-password"


def test_versions_override_pins_and_drop_leading_v() -> None:
    config = validate_inventory(with_data(versions={"headscale": "v0.29.3", "debian": "trixie"}))
    assert config.versions == {**VERSIONS, "headscale": "0.29.3", "debian": "trixie"}


def test_optional_keys_may_be_absent() -> None:
    data = {"domain": DOMAIN, "headscale_url": f"https://headscale.{DOMAIN}", "tailnet_domain": f"tailnet.{DOMAIN}"}
    groups = good_groups()
    groups.pop("exit_nodes")
    groups["k3s_servers"] = (["master"], {})
    config = validate_inventory(make_inventory(data=data, groups=groups))
    assert config.apps == []
    assert config.ntp_servers and config.ssh_permit_root_login == "prohibit-password"
    assert config.hosts["master"].external_ssd is None


def test_users_own_groups_are_fine() -> None:
    groups = good_groups()
    groups["monitoring"] = (["t420", "pi"], {"grafana": True})
    groups["empty_group"] = ([], {"whatever": 1})
    validate_inventory(make_inventory(groups=groups))


def test_hostname_data_overrides_inventory_name() -> None:
    config = validate_inventory(with_host("k3s_servers", 0, "192.0.2.10", {"hostname": "master"}))
    assert config.hosts["192.0.2.10"].hostname == "master"


def test_public_ipv4_from_data_else_an_ipv4_ssh_hostname() -> None:
    config = validate_inventory(make_inventory())
    assert config.hosts["cloud"].public_ipv4 == "203.0.113.10" and config.hosts["master"].public_ipv4 is None
    config = validate_inventory(with_host("headscale", 0, "cloud", {"ssh_hostname": "vm.example.org",
                                                                    "public_ipv4": "198.51.100.4"}))
    assert config.hosts["cloud"].public_ipv4 == "198.51.100.4"


def test_connector_hosts_default_to_their_name() -> None:
    config = validate_inventory(with_host("exit_nodes", 0, "@ssh/pi", {}))
    assert config.hosts["@ssh/pi"].hostname == "pi"


AGENT_HOSTS: list[Any] = [("t420", {}), ("t410", {})]

# (id, inventory, exact problem lines)
BAD_CASES: list[tuple[str, Any, list[str]]] = [
    ("public_ipv4 not an address", lambda: with_host("headscale", 0, "cloud", {"public_ipv4": "vm.example.org"}), [
        "cloud.public_ipv4: 'vm.example.org' is not an IPv4 address (expected the host's public IPv4, e.g. "
        "203.0.113.10, or None)",
    ]),
    ("headscale backup keys",
     lambda: with_data(headscale_backup_dir="backups", headscale_backup_keep=0, headscale_backup_schedule="daily; rm",
                       headscale_restore="tests/unit/data/headscale-backup-no-key.tar.gz"), [
        "all.headscale_backup_dir: 'backups' is not an absolute path (expected a directory on the headscale host: "
        "/var/backups/headscale)",
        "all.headscale_backup_keep: 0 is out of range (expected a number of archives 1-1000)",
        "all.headscale_backup_schedule: 'daily; rm' is not a calendar expression (expected a systemd OnCalendar= "
        "value, like daily or *-*-* 03:00)",
        "all.headscale_restore: tests/unit/data/headscale-backup-no-key.tar.gz: has no noise_private.key (expected "
        "None, or the path of a backup archive made by the headscale deploy (headscale-….tar.gz))",
    ]),
    ("headscale backups to S3 without keys",
     lambda: with_data(headscale_backup_s3={"endpoint": "s3.example.org", "bucket": "backups"}), [
        'cloud.s3_access_key: is missing while headscale_backup_s3 is set (expected {"env": "NAME"} or {"file": '
        '"PATH"}; never a literal secret in group_data, for the S3 bucket\'s key)',
        'cloud.s3_secret_key: is missing while headscale_backup_s3 is set (expected {"env": "NAME"} or {"file": '
        '"PATH"}; never a literal secret in group_data, for the S3 bucket\'s key)',
    ]),
    ("headscale backups to a malformed S3 location",
     lambda: with_data(headscale_backup_s3={"endpoint": "https://s3.example.org", "bucket": "", "tls": False},
                       s3_access_key={"env": "S3_KEY"}, s3_secret_key={"env": "S3_SECRET"}), [
        "all.headscale_backup_s3: endpoint 'https://s3.example.org' is not a host name (expected {\"endpoint\": "
        "\"s3.example.org\", \"bucket\": \"backups\", \"region\": …, \"folder\": …, \"insecure\": …} or None (no "
        "https://))",
        "all.headscale_backup_s3: unknown keys ['tls'] (expected {\"endpoint\": \"s3.example.org\", \"bucket\": "
        "\"backups\", \"region\": …, \"folder\": …, \"insecure\": …} or None)",
        "all.headscale_backup_s3: bucket is missing (expected {\"endpoint\": \"s3.example.org\", \"bucket\": "
        "\"backups\", \"region\": …, \"folder\": …, \"insecure\": …} or None)",
    ]),
    # groups
    ("two headscale hosts", lambda: with_groups(headscale=(["cloud", "pi"], {})), [
        "headscale: 2 hosts (cloud, pi) (expected exactly one headscale host)",
    ]),
    ("no headscale host", lambda: with_groups(headscale=None), [
        "headscale: no hosts (expected exactly one headscale host)",
    ]),
    ("no entrance", lambda: with_groups(entrance=None), [
        "entrance: no hosts (expected at least one entrance host, with a public IP)",
    ]),
    ("no k3s server", lambda: with_groups(k3s_servers=None), [
        "k3s_servers: no hosts (expected at least one k3s server)",
    ]),
    ("even k3s servers",
     lambda: with_groups(k3s_servers=(["master", "t420"], {"k3s_lan": "home"}), k3s_agents=(["t410"], {})), [
        "k3s_servers: 2 hosts (master, t420) (expected an odd number of k3s servers, e.g. 1 or 3, "
        "so embedded etcd keeps quorum)",
    ]),
    ("three servers, LAN unknown",
     lambda: with_groups(k3s_servers=(["master", "t420", "t410"], {}), k3s_agents=None), [
        "k3s_servers.k3s_lan: 3 servers with embedded etcd, not all on one LAN: master=unset, t420=unset, "
        "t410=unset (expected the same k3s_lan (e.g. 'home') on every server: etcd is not supported across a VPN; "
        "or k3s_etcd_across_vpn = True on every server to accept that risk)",
    ]),
    ("three servers, two LANs",
     lambda: with_groups(k3s_servers=(["master", "t420", ("t410", {"k3s_lan": "office"})], {"k3s_lan": "home"}),
                         k3s_agents=None), [
        "k3s_servers.k3s_lan: 3 servers with embedded etcd, not all on one LAN: master=home, t420=home, "
        "t410=office (expected the same k3s_lan (e.g. 'home') on every server: etcd is not supported across a "
        "VPN; or k3s_etcd_across_vpn = True on every server to accept that risk)",
    ]),
    ("server and agent", lambda: with_groups(k3s_agents=(["t420", "master"], {})), [
        "k3s_agents: master is also in k3s_servers (expected each k3s node in k3s_servers or k3s_agents, "
        "not both)",
    ]),
    # host names
    ("bad inventory name", lambda: with_host("exit_nodes", 0, "Pi_4", {}), [
        "Pi_4.hostname: the inventory name 'Pi_4' is not a valid host name (expected an RFC 1123 label: "
        "lower-case letters, digits and '-', at most 63, like t420; or set hostname in the host's data)",
    ]),
    ("bad hostname value", lambda: with_host("exit_nodes", 0, "pi", {"hostname": "-pi"}), [
        "pi.hostname: '-pi' is not a valid host name (expected an RFC 1123 label: lower-case letters, "
        "digits and '-', at most 63, like t420 or node-1)",
    ]),
    ("hostname too long", lambda: with_host("exit_nodes", 0, "pi", {"hostname": "p" * 64}), [
        f"pi.hostname: '{'p' * 56}... is not a valid host name (expected an RFC 1123 label: lower-case "
        "letters, digits and '-', at most 63, like t420 or node-1)",
    ]),
    ("duplicate hostname", lambda: with_host("exit_nodes", 0, "pi", {"hostname": "t420"}), [
        "pi.hostname: 't420' is also the hostname of t420 (expected a unique hostname per host)",
    ]),
    # domain
    ("domain empty label", lambda: with_data(domain="Blog..example.org"), [
        "all.domain: 'Blog..example.org' is not a valid domain name "
        "(expected a lower-case DNS name like blog.example.org)",
    ]),
    ("domain one label", lambda: with_data(domain="localhost", apps=[]), [
        "all.domain: 'localhost' is not a valid domain name "
        "(expected a lower-case DNS name like blog.example.org)",
    ]),
    ("domain numeric tld", lambda: with_data(domain="example.123", apps=[]), [
        "all.domain: 'example.123' is not a valid domain name "
        "(expected a lower-case DNS name like blog.example.org)",
    ]),
    ("domain upper case", lambda: with_data(domain="Example.org", apps=[]), [
        "all.domain: 'Example.org' is not a valid domain name "
        "(expected a lower-case DNS name like blog.example.org)",
    ]),
    ("domain label too long", lambda: with_data(domain=f"{'a' * 64}.org", apps=[]), [
        f"all.domain: '{'a' * 56}... is not a valid domain name "
        "(expected a lower-case DNS name like blog.example.org)",
    ]),
    ("domain too long", lambda: with_data(domain=".".join(["a" * 63] * 4) + ".org", apps=[]), [
        f"all.domain: '{'a' * 56}... is not a valid domain name "
        "(expected a lower-case DNS name like blog.example.org)",
    ]),
    ("domain wrong type", lambda: with_data(domain=42, apps=[]), [
        "all.domain: 42 is an int (expected a string, a lower-case DNS name like blog.example.org)",
    ]),
    ("domain missing", lambda: with_data(domain=None, apps=[]), [
        "all.domain: is missing (expected a lower-case DNS name like blog.example.org, in group_data/all.py)",
    ]),
    # versions
    ("versions not a dict", lambda: with_data(versions=["0.29.2"]), [
        "all.versions: ['0.29.2'] is a list (expected a dict like {\"tailscale\": \"1.98.10\"})",
    ]),
    ("versions unknown component", lambda: with_data(versions={"k8s": "1.31.0"}), [
        "all.versions.k8s: is not a versioned component (expected one of debian, headscale, k3s, tailscale)",
    ]),
    ("headscale version", lambda: with_data(versions={"headscale": "latest"}), [
        "all.versions.headscale: 'latest' is not a valid headscale version "
        "(expected MAJOR.MINOR.PATCH like 0.29.2)",
    ]),
    ("tailscale version", lambda: with_data(versions={"tailscale": "1.98"}), [
        "all.versions.tailscale: '1.98' is not a valid tailscale version "
        "(expected MAJOR.MINOR.PATCH like 1.98.10)",
    ]),
    ("version wrong type", lambda: with_data(versions={"tailscale": 1.98}), [
        "all.versions.tailscale: 1.98 is a float (expected a string, MAJOR.MINOR.PATCH like 1.98.10)",
    ]),
    ("debian codename", lambda: with_data(versions={"debian": "buster"}), [
        "all.versions.debian: 'buster' is not a supported Debian release "
        "(expected a Debian codename: bookworm, trixie)",
    ]),
    # apps
    ("apps not a list", lambda: with_data(apps="blog"), [
        "all.apps: 'blog' is a str (expected a list of apps like {\"name\": \"blog\", ...})",
    ]),
    ("app not a dict", lambda: with_apps({"name": "blog"}, "ntfy"), [
        "all.apps[1]: 'ntfy' is a str "
        "(expected an app like {\"name\": \"blog\", \"hostname\": \"blog.DOMAIN\"})",
    ]),
    ("unknown app key", lambda: with_app(1, replicas=2), [
        "all.apps[1].replicas: is not an app key "
        "(expected only name, hostname, public, tcp_port, proxy_protocol, kind, image, port, storage, storage_path, "
        "env, secrets, resources, backup, backup_schedule)",
    ]),
    ("app name missing", lambda: with_app(3, name=None), [
        "all.apps[3].name: is missing (expected a unique app name like blog)",
    ]),
    ("app name not a label", lambda: with_app(3, name="Back_up"), [
        "all.apps[3].name: 'Back_up' is not a valid app name (expected an RFC 1123 label: lower-case "
        "letters, digits and '-', at most 63, like blog or home-assistant)",
    ]),
    ("duplicate app name", lambda: with_app(3, name="blog"), [
        "all.apps[3].name: 'blog' is also the name of apps[1] (expected a unique name per app)",
    ]),
    ("bad app hostname", lambda: with_app(1, hostname="Blog..example.org"), [
        "all.apps[1].hostname: 'Blog..example.org' is not a valid domain name "
        "(expected a lower-case DNS name like blog.example.org)",
    ]),
    ("duplicate app hostname", lambda: with_app(2, hostname=f"blog.{DOMAIN}"), [
        "all.apps[2].hostname: 'blog.example.org' is also the hostname of apps[1] "
        "(expected a unique hostname per app)",
    ]),
    ("app hostname outside domain", lambda: with_app(1, hostname="blog.example.net"), [
        "all.apps[1].hostname: 'blog.example.net' is not under the domain 'example.org' "
        "(expected example.org or a name like NAME.example.org)",
    ]),
    ("app hostname suffix but not under domain", lambda: with_app(1, hostname="blogexample.org"), [
        "all.apps[1].hostname: 'blogexample.org' is not under the domain 'example.org' "
        "(expected example.org or a name like NAME.example.org)",
    ]),
    ("public app without hostname", lambda: with_app(3, public=True), [
        "all.apps[3].hostname: is missing for a public app "
        "(expected a hostname the entrance lets in, like NAME.example.org)",
    ]),
    ("public as string", lambda: with_app(1, public="yes"), [
        "all.apps[1].public: 'yes' is a str (expected True or False)",
    ]),
    ("proxy_protocol as int", lambda: with_app(4, proxy_protocol=0), [
        "all.apps[4].proxy_protocol: 0 is an int (expected True or False)",
    ]),
    ("tcp_port as string", lambda: with_app(4, tcp_port="25565"), [
        "all.apps[4].tcp_port: '25565' is a str (expected an integer port 1-65535, not 22, 80 or 443)",
    ]),
    ("tcp_port as bool", lambda: with_app(4, tcp_port=True), [
        "all.apps[4].tcp_port: True is a bool (expected an integer port 1-65535, not 22, 80 or 443)",
    ]),
    ("tcp_port zero", lambda: with_app(4, tcp_port=0), [
        "all.apps[4].tcp_port: 0 is out of range (expected an integer port 1-65535, not 22, 80 or 443)",
    ]),
    ("tcp_port too big", lambda: with_app(4, tcp_port=70000), [
        "all.apps[4].tcp_port: 70000 is out of range (expected an integer port 1-65535, not 22, 80 or 443)",
    ]),
    ("tcp_port 22", lambda: with_app(4, tcp_port=22), [
        "all.apps[4].tcp_port: 22 is reserved by the entrance (SSH) "
        "(expected an integer port 1-65535, not 22, 80 or 443)",
    ]),
    ("tcp_port 80", lambda: with_app(4, tcp_port=80), [
        "all.apps[4].tcp_port: 80 is reserved by the entrance (HTTP) "
        "(expected an integer port 1-65535, not 22, 80 or 443)",
    ]),
    ("tcp_port 443", lambda: with_app(4, tcp_port=443), [
        "all.apps[4].tcp_port: 443 is reserved by the entrance (HTTPS) "
        "(expected an integer port 1-65535, not 22, 80 or 443)",
    ]),
    ("duplicate tcp_port", lambda: with_app(3, tcp_port=25565), [
        "all.apps[4].tcp_port: 25565 is also the tcp_port of apps[3] (expected a unique tcp_port per app)",
    ]),
    # base settings
    ("base_packages not a list", lambda: with_data(base_packages="curl jq"), [
        "all.base_packages: 'curl jq' is a str (expected a list of Debian package names like curl)",
    ]),
    ("bad package name", lambda: with_data(base_packages=["curl", "Jq", "x", 7]), [
        "all.base_packages[1]: 'Jq' is not a valid package name (expected Debian package names like curl)",
        "all.base_packages[2]: 'x' is not a valid package name (expected Debian package names like curl)",
        "all.base_packages[3]: 7 is an int (expected a string, Debian package names like curl)",
    ]),
    ("ntp_servers empty", lambda: with_data(ntp_servers=[]), [
        "all.ntp_servers: is empty (expected at least one of NTP server host names or IP addresses)",
    ]),
    ("ntp_servers not a list", lambda: with_data(ntp_servers="pool.ntp.org"), [
        "all.ntp_servers: 'pool.ntp.org' is a str (expected a list of NTP server host names or IP addresses)",
    ]),
    ("bad ntp server", lambda: with_data(ntp_servers=["pool.ntp.org", "ntp..example.org"]), [
        "all.ntp_servers[1]: 'ntp..example.org' is not a valid host "
        "(expected NTP server host names or IP addresses)",
    ]),
    ("ssh_permit_root_login yes", lambda: with_data(ssh_permit_root_login="yes"), [
        "all.ssh_permit_root_login: 'yes' is not allowed (expected 'prohibit-password' or 'no')",
    ]),
    ("ssh_permit_root_login bool", lambda: with_data(ssh_permit_root_login=False), [
        "all.ssh_permit_root_login: False is not allowed (expected 'prohibit-password' or 'no')",
    ]),
    ("connection_lost_after too short", lambda: with_data(connection_lost_after=5), [
        "all.connection_lost_after: 5 is out of range (expected whole seconds 10-3600)",
    ]),
    ("connection_lost_after a string", lambda: with_data(connection_lost_after="90"), [
        "all.connection_lost_after: '90' is a str (expected whole seconds 10-3600)",
    ]),
    # per host
    ("bad hardware", lambda: with_host("k3s_servers", 0, "master", {"hardware": "Fanless PC"}), [
        "master.hardware: 'Fanless PC' is not a valid slug (expected a lower-case slug like thinkpad-t420)",
    ]),
    ("bad external_ssd", lambda: with_host("k3s_servers", 0, "master", {"external_ssd": "sdb"}), [
        "master.external_ssd: 'sdb' is not a block device path "
        "(expected /dev/NAME, e.g. /dev/sdb, /dev/nvme0n1 or /dev/disk/by-id/...)",
    ]),
    ("external_ssd escapes /dev",
     lambda: with_host("k3s_servers", 0, "master", {"external_ssd": "/dev/../etc"}), [
        "master.external_ssd: '/dev/../etc' is not a block device path "
        "(expected /dev/NAME, e.g. /dev/sdb, /dev/nvme0n1 or /dev/disk/by-id/...)",
    ]),
    ("external_ssd wrong type",
     lambda: with_host("k3s_servers", 0, "master", {"external_ssd": ["/dev/sdb"]}), [
        "master.external_ssd: ['/dev/sdb'] is a list "
        "(expected a string, /dev/NAME, e.g. /dev/sdb, /dev/nvme0n1 or /dev/disk/by-id/...)",
    ]),
    # secrets
    ("literal secret", lambda: with_data(k3s_token="K10abc::server:s3cr3t"), [
        'all.k3s_token: is a literal secret (expected {"env": "NAME"} or {"file": "PATH"}; '
        "never a literal secret in group_data)",
    ]),
    ("secret with two keys", lambda: with_data(s3_secret_key={"env": "A", "file": "b"}), [
        "all.s3_secret_key: a dict with 'env', 'file' is not a secret reference "
        '(expected {"env": "NAME"} or {"file": "PATH"}; never a literal secret in group_data)',
    ]),
    ("secret wrong type", lambda: with_data(dns01_token=1234), [
        "all.dns01_token: an int is not a secret reference "
        '(expected {"env": "NAME"} or {"file": "PATH"}; never a literal secret in group_data)',
    ]),
    ("secret bad env name", lambda: with_data(dns01_token={"env": "not a name"}), [
        'all.dns01_token: the env value is not an environment variable name '
        '(expected {"env": "NAME"}, e.g. K3S_TOKEN)',
    ]),
]


@pytest.mark.parametrize(("inventory", "expected"), [case[1:] for case in BAD_CASES],
                         ids=[case[0] for case in BAD_CASES])
def test_bad_input_yields_exactly_the_expected_problems(inventory: Any, expected: list[str]) -> None:
    inventory = inventory()
    problems = problems_of(inventory, require_secrets=False)
    assert problems == expected
    assert_problem_format(problems, names_of(inventory))


def test_every_problem_is_reported_at_once() -> None:
    data = good_data()
    data["domain"] = "example..org"
    data["apps"].append({"name": "blog", "tcp_port": "x", "colour": "red"})
    data["versions"] = {"debian": "sid"}
    data["k3s_token"] = "literal"
    groups = good_groups()
    groups["headscale"] = (["cloud", "pi"], {})
    groups["k3s_agents"] = (["t420", "master"], {})
    inventory = make_inventory(data=data, groups=groups)
    problems = problems_of(inventory)
    assert_problem_format(problems, names_of(inventory))
    heads = [line.split(":", 1)[0] for line in problems]
    assert heads == [
        "headscale", "k3s_agents", "all.domain", "all.versions.debian", "all.k3s_token", "all.apps[5].colour",
        "all.apps[5].tcp_port", "all.apps[5].name",
    ]
    error = pytest.raises(ConfigError, validate_inventory, inventory).value
    text = str(error)
    assert text.splitlines()[0] == "inventory has 8 problems; nothing was deployed:"
    assert text.splitlines()[1:] == [f"    {line}" for line in problems]


def test_group_wide_values_are_reported_once_under_their_group() -> None:
    groups = good_groups()
    groups["k3s_agents"] = (AGENT_HOSTS, {"external_ssd": "sdb", "hardware": "ThinkPad"})
    data = good_data()
    data["domain"] = "EXAMPLE.org"
    data["apps"] = []
    problems = problems_of(make_inventory(data=data, groups=groups))
    assert problems == [
        "all.domain: 'EXAMPLE.org' is not a valid domain name "
        "(expected a lower-case DNS name like blog.example.org)",
        "k3s_agents.hardware: 'ThinkPad' is not a valid slug (expected a lower-case slug like thinkpad-t420)",
        "k3s_agents.external_ssd: 'sdb' is not a block device path "
        "(expected /dev/NAME, e.g. /dev/sdb, /dev/nvme0n1 or /dev/disk/by-id/...)",
    ]


def test_host_data_overrides_group_data_and_is_named_by_host() -> None:
    groups = good_groups()
    groups["k3s_agents"] = ([("t420", {"external_ssd": "/dev/sdc"}), ("t410", {"external_ssd": "disk"})],
                            {"external_ssd": "/dev/sdb"})
    config_problems = problems_of(make_inventory(groups=groups))
    assert [line.split(":")[0] for line in config_problems] == ["t410.external_ssd"]
    groups["k3s_agents"] = ([("t420", {"external_ssd": "/dev/sdc"}), "t410"], {"external_ssd": "/dev/sdb"})
    config = validate_inventory(make_inventory(groups=groups))
    assert config.hosts["t420"].external_ssd == "/dev/sdc"
    assert config.hosts["t410"].external_ssd == "/dev/sdb"


def test_cluster_wide_value_set_differently_by_a_group_is_a_problem() -> None:
    groups = good_groups()
    groups["k3s_agents"] = (AGENT_HOSTS, {"domain": "example.net"})
    assert problems_of(make_inventory(groups=groups)) == [
        "k3s_agents.domain: 'example.net' differs from all.domain "
        "(expected one domain for the whole cluster, set once in group_data/all.py)",
    ]
    groups["k3s_agents"] = (AGENT_HOSTS, {"domain": DOMAIN})
    validate_inventory(make_inventory(groups=groups))


def test_override_data_is_named() -> None:
    problems = problems_of(make_inventory(override={"ssh_permit_root_login": "yes"}))
    assert problems == [
        "--data.ssh_permit_root_login: 'yes' is not allowed (expected 'prohibit-password' or 'no')",
    ]


def test_secret_keys_known() -> None:
    assert {"k3s_token", "s3_access_key", "s3_secret_key", "dns01_token", "alerts_ntfy_token",
            "app_backup_password", "headscale_api_key"} == SECRET_KEYS


# Secrets
#


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "k3s_token"
    path.write_text("K10file-secret\n")
    path.chmod(0o600)
    return path


def test_secret_references_pass_validation(monkeypatch: pytest.MonkeyPatch, secret_file: Path) -> None:
    monkeypatch.setenv("PK3S_TEST_TOKEN", "from-env")
    config = validate_inventory(with_data(
        k3s_token={"file": str(secret_file)},
        dns01_token={"env": "PK3S_TEST_TOKEN"},
        s3_secret_key=HiddenValue("hidden"),
    ))
    assert config.hosts["cloud"].secrets["k3s_token"] == {"file": str(secret_file)}


def test_missing_env_and_file_are_problems_only_when_required(tmp_path: Path) -> None:
    inventory = with_data(k3s_token={"env": "PK3S_SURELY_UNSET"}, dns01_token={"file": "missing/token"})
    assert problems_of(inventory, require_secrets=False) == []
    problems = problems_of(inventory, require_secrets=True, cwd=str(tmp_path))
    assert problems == [
        "all.k3s_token: environment variable PK3S_SURELY_UNSET is not set "
        "(expected the secret in $PK3S_SURELY_UNSET when deploying)",
        f"all.dns01_token: secret file missing/token does not exist "
        f"(expected a readable file {tmp_path}/missing/token holding the secret)",
    ]


def test_readable_secret_file_is_a_problem_even_for_check(secret_file: Path) -> None:
    secret_file.chmod(0o644)
    problems = problems_of(with_data(k3s_token={"file": str(secret_file)}), require_secrets=False)
    assert problems == [
        f"all.k3s_token: secret file {secret_file} has mode 0644 "
        f"(expected mode 0600: chmod 600 {secret_file})",
    ]


def test_resolve_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PK3S_TEST_TOKEN", "  s3cr3t-env\n")
    value = resolve_secret({"env": "PK3S_TEST_TOKEN"}, "all.k3s_token")
    assert isinstance(value, HiddenValue)
    assert value.unmask() == "s3cr3t-env"
    assert "s3cr3t" not in str(value) and "s3cr3t" not in repr(value)


def test_resolve_secret_from_file(secret_file: Path) -> None:
    value = resolve_secret({"file": secret_file.name}, "all.k3s_token", cwd=str(secret_file.parent))
    assert value.unmask() == "K10file-secret"
    assert str(value) == "*MASKED*" and "K10" not in f"{value}"


def test_resolve_secret_rejects_readable_file(secret_file: Path) -> None:
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError) as error:
        resolve_secret({"file": str(secret_file)}, "all.k3s_token")
    assert error.value.problems == [
        f"all.k3s_token: secret file {secret_file} has mode 0644 "
        f"(expected mode 0600: chmod 600 {secret_file})",
    ]


def test_resolve_secret_names_missing_file_and_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_secret({"file": str(tmp_path / "nope")}, "k3s_servers.k3s_token")
    assert error.value.problems == [
        f"k3s_servers.k3s_token: secret file {tmp_path}/nope does not exist "
        f"(expected a readable file {tmp_path}/nope holding the secret)",
    ]
    with pytest.raises(ConfigError, match=r"all\.s3_access_key: environment variable PK3S_SURELY_UNSET"):
        resolve_secret({"env": "PK3S_SURELY_UNSET"}, "all.s3_access_key")


def test_resolve_secret_rejects_empty_file(secret_file: Path) -> None:
    secret_file.write_text("\n")
    with pytest.raises(ConfigError, match=r"all\.k3s_token: secret file .* is empty"):
        resolve_secret({"file": str(secret_file)}, "all.k3s_token")


def test_resolve_secret_hidden_value_and_literal() -> None:
    hidden = HiddenValue("s3cr3t")
    assert resolve_secret(hidden, "all.k3s_token") is hidden
    assert "s3cr3t" not in str(hidden)
    with pytest.raises(ConfigError) as error:
        resolve_secret("s3cr3t", "all.k3s_token")
    assert "s3cr3t" not in str(error.value)
    assert error.value.problems[0].startswith("all.k3s_token: is a literal secret (expected")


# The check command and the test inventories on disk
#


def test_home_inventory_checks_clean() -> None:
    result = run_check("inventories/home.py", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: inventories/home.py: 5 hosts in groups ")
    assert "14 apps (9 public)" in result.stdout
    assert "shape only" in result.stdout


def test_check_with_cwd_from_elsewhere(tmp_path: Path) -> None:
    result = run_check(str(REPO / "inventories" / "home.py"), "--cwd", str(REPO), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_check_reports_errors_in_inventory_code(tmp_path: Path) -> None:
    (tmp_path / "inventory.py").write_text('raise RuntimeError("no such host list")\n')
    result = run_check("inventory.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "inventory.py: could not load the inventory: RuntimeError: no such host list" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_missing_inventory_file(tmp_path: Path) -> None:
    result = run_check("inventories/nope.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "inventories/nope.py: no such inventory file" in result.stderr


def test_there_are_enough_bad_inventories() -> None:
    assert len(CASES) >= 13
    for case in CASES:
        assert (case / "inventory.py").is_file() and (case / "group_data").is_dir() and expected_lines(case)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_check_rejects_bad_inventory(case: Path) -> None:
    result = run_check("inventory.py", cwd=case)
    assert result.returncode == 1, result.stdout + result.stderr
    for expected in expected_lines(case):
        assert expected in result.stderr
    lines = [line.strip() for line in result.stderr.splitlines()[1:] if line.startswith("    ")]
    assert len(lines) == len(expected_lines(case)), result.stderr
    inventory = load_inventory(str(case / "inventory.py"), cwd=str(case))
    assert_problem_format(lines, names_of(inventory))


# A deploy with a bad inventory executes nothing
#


@contextmanager
def deploy_contexts(state: State) -> Iterator[None]:
    previous = ctx_state.get(), ctx_inventory.get()
    ctx_state.set(state)
    ctx_inventory.set(state.inventory)
    try:
        yield
    finally:
        ctx_state.set(previous[0])
        ctx_inventory.set(previous[1])


def fake_state(inventory_path: Path, cwd: Path, connector: Any) -> State:
    """A pyinfra state whose hosts all use the fake connector, connected the way the CLI connects."""
    inventory = load_inventory(str(inventory_path), cwd=str(cwd))
    for host in inventory:
        host.connector_cls = connector
    state = State(inventory, Config())
    state.cwd = str(cwd)
    for host in inventory:
        host.connect()
        state.activate_host(host)
    return state


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_deploy_with_bad_inventory_executes_nothing(
    case: Path, fake_connector: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyinfra_cli.util import load_deploy_file

    calls: list[Inventory] = []
    real_validate = config_mod.validate_inventory

    def counting_validate(inventory: Inventory, **kwargs: Any) -> ClusterConfig:
        calls.append(inventory)
        return real_validate(inventory, **kwargs)

    monkeypatch.setattr(config_mod, "validate_inventory", counting_validate)
    state = fake_state(case / "inventory.py", case, fake_connector)
    assert len(state.inventory) >= 2

    with deploy_contexts(state):
        with pytest.raises(ConfigError) as error:
            load_deploy_file(state, str(DEPLOY))
        with pytest.raises(ConfigError) as again:
            validate_state(state)

    for expected in expected_lines(case):
        assert any(expected in problem for problem in error.value.problems), expected
    assert again.value.problems == error.value.problems
    assert len(calls) == 1, "the inventory is validated once, not once per host"
    assert all(not ops for ops in state.ops.values())
    assert state.op_meta == {}
    assert fake_connector.log == {}


def test_deploy_with_good_inventory_plans_base_on_every_host(fake_connector: Any, monkeypatch: Any) -> None:
    """The good inventory passes validation and the real deploy.py plans the base deploy on every host."""
    from pyinfra_cli.util import load_deploy_file

    for name in ("KUTT_JWT_SECRET", "NEXTCLOUD_ADMIN_PASSWORD", "JUPYTERHUB_PASSWORD"):  # the catalog's secrets
        monkeypatch.setenv(name, f"test-{name.lower()}")

    from portable_k3s.facts.util import SEPARATOR

    # A fresh host whose deploying user has one authorized key (else the sshd hardening refuses to plan).
    answer = ["yes", SEPARATOR, "root", SEPARATOR, "1"]
    fake_connector.responses = {
        "authorized_keys": "\n".join(answer), "uname -s": "Linux", "uname -m": "x86_64",
        "command -v useradd": "/usr/sbin/useradd",
    }
    state = fake_state(REPO / "inventories" / "home.py", REPO, fake_connector)
    with deploy_contexts(state):
        load_deploy_file(state, str(DEPLOY))
        config = validate_state(state)
    assert sorted(config.hosts) == ["cloud", "master", "pi", "t410", "t420"]
    for host in state.inventory:
        names = {name for meta in (state.op_meta[h] for h in state.ops[host]) for name in meta.names}
        assert {"Base host | Harden sshd", "Base host | Configure time sync"} <= names, (host.name, names)


@pytest.mark.parametrize(("mtu", "problem"), [
    (1279, "all.tailscale_mtu: 1279 is out of range"), (1500, "all.tailscale_mtu: 1500 is out of range"),
    ("1420", "all.tailscale_mtu: "), (True, "all.tailscale_mtu: "),
])
def test_the_tailnet_mtu_is_refused_outside_what_a_1500_byte_path_carries(mtu: Any, problem: str) -> None:
    found = problems_of(make_inventory({**good_data(), "tailscale_mtu": mtu}))
    assert [p for p in found if "tailscale_mtu" in p] == [next(p for p in found if p.startswith(problem))]
    assert "1412 over PPPoE" in next(p for p in found if "tailscale_mtu" in p)


def test_the_tailnet_mtu_is_set_in_one_place() -> None:
    assert problems_of(make_inventory({**good_data(), "tailscale_mtu": 1420})) == []
    assert problems_of(make_inventory({**good_data(), "tailscale_mtu": None})) == []
    groups = good_groups()
    groups["k3s_agents"] = (groups["k3s_agents"][0], {"tailscaled_env": {"TS_DEBUG_MTU": "1400"}})
    found = problems_of(make_inventory({**good_data(), "tailscale_mtu": 1420}, groups))
    assert found == ["k3s_agents.tailscaled_env: sets TS_DEBUG_MTU while all.tailscale_mtu is set "
                     "(expected the MTU in tailscale_mtu only)"], found


def _unreachable_bad_project(tmp_path: Path) -> Path:
    """A project whose inventory has two problems and hosts nothing answers (SSH port 9 on this machine); the
    inventory file validates itself on its last line (line 7)."""
    (tmp_path / "group_data").mkdir()
    (tmp_path / "inventories").mkdir()
    (tmp_path / "group_data" / "all.py").write_text(
        'domain = "example.org"\nheadscale_url = "https://headscale.example.org"\n'
        'tailnet_domain = "tailnet.example.org"\nentrance_https_port = "443"\n')
    (tmp_path / "deploy.py").write_text((REPO / "deploy.py").read_text())
    unreachable = {"ssh_hostname": "127.0.0.1", "ssh_port": 9}
    (tmp_path / "inventories" / "bad.py").write_text(
        "from portable_k3s.config import check_inventory_file\n\n"
        f"headscale = [('cloud', {unreachable!r})]\nentrance = ['cloud']\n"
        f"k3s_servers = [('master', {{**{unreachable!r}, 'tailscale_acept_dns': False}})]\n\n"
        "check_inventory_file(__file__)\n")
    return tmp_path


UNREACHABLE_PROBLEMS = [
    "master.tailscale_acept_dns: is not a setting: did you mean tailscale_accept_dns? (expected tailscale_accept_dns, "
    "or a key of your own with another name)",
    "all.entrance_https_port: '443' is a str (expected a port 1-65535 where the entrance takes TLS and the ingress "
    "serves it)",
]


def test_a_bad_inventory_of_unreachable_hosts_shows_its_problems_before_pyinfra_connects(tmp_path: Path) -> None:
    """pyinfra stops at the inventory file's check, naming that line of the user's file, instead of failing to
    connect."""
    project = _unreachable_bad_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pyinfra", "inventories/bad.py", "deploy.py", "-y"], cwd=project,
                         env=env, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "pyinfra error in inventories/bad.py line 7: inventory has 2 problems; nothing was deployed:" in output
    for problem in UNREACHABLE_PROBLEMS:
        assert f"    {problem}" in output
    assert "Could not connect" not in output and "No hosts remaining" not in output
    assert "portable_k3s/" not in output  # the error points at the user's file, not at the library


def test_check_reports_a_self_checking_inventory_once(tmp_path: Path) -> None:
    """``check`` loads the inventory with its own check off: the problems come once, in check's format."""
    run = run_check("inventories/bad.py", cwd=_unreachable_bad_project(tmp_path))
    assert run.returncode == 1
    assert run.stderr.splitlines()[:3] == ["inventories/bad.py: 2 problems:",
                                           *(f"    {problem}" for problem in UNREACHABLE_PROBLEMS)]
