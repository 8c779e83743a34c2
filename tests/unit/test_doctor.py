"""doctor's reasoning over a scripted world (``World``: DNS, TCP, TLS and the hosts' command answers, each of which a
test can break). The real probe (DNS, sockets, SSH) is exercised against the lab in tests/lab/test_doctor.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from pyinfra.api import Inventory

from portable_k3s.config import validate_inventory
from portable_k3s.doctor import diagnose, print_report
from portable_k3s.facts.util import SEPARATOR

ENTRANCE_IP = "203.0.113.10"
NODES = {"master": "100.64.0.2", "t420": "100.64.0.3", "t410": "100.64.0.4"}
APPS = [
    {"name": "blog", "kind": "hugo", "hostname": "blog.example.org", "public": True},
    {"name": "vault", "kind": "vaultwarden", "hostname": "pass.example.org"},
]


def _config():
    data = {"domain": "example.org", "headscale_url": "https://headscale.example.org",
            "tailnet_domain": "tailnet.example.org", "apps": APPS}
    return validate_inventory(Inventory(
        (["cloud", "master", "t420", "t410"], data),
        headscale=([("cloud", {"ssh_hostname": ENTRANCE_IP})], {}), entrance=(["cloud"], {}),
        k3s_servers=(["master"], {}), k3s_agents=(["t420", "t410"], {}),
    ))


@dataclass
class World:
    """A healthy cluster as doctor's probe sees it; tests flip one thing at a time."""

    dns: dict[str, list[str]] = field(default_factory=lambda: {"blog.example.org": [ENTRANCE_IP]})
    nginx_running: bool = True
    whitelist: set[str] = field(default_factory=lambda: {"blog.example.org"})
    certificate_valid: bool = True
    headscale_running: bool = True
    tailscaled_stopped: set[str] = field(default_factory=set)
    ingress_stopped: set[str] = field(default_factory=set)
    unreachable: set[str] = field(default_factory=set)
    commands: list[tuple[str, str]] = field(default_factory=list)

    def resolve(self, name: str) -> list[str]:
        if name not in self.dns:
            raise OSError(f"[Errno -2] Name or service not known: {name}")
        return self.dns[name]

    def tcp(self, address: str, port: int) -> str | None:
        return None if address == ENTRANCE_IP and self.nginx_running else "[Errno 111] Connection refused"

    def tls(self, address: str, port: int, server_name: str) -> tuple[str | None, str | None]:
        if self.tcp(address, port) or server_name not in self.whitelist:
            return "EOF occurred in violation of protocol", None
        return None, None if self.certificate_valid else "self-signed certificate"

    def run(self, host: str, command: str, timeout: float | None = None) -> tuple[bool, str]:
        self.commands.append((host, command))
        if host in self.unreachable:
            return False, "Could not connect (timed out)"
        if command == "true":
            return True, ""
        if command.startswith("nginx -T"):
            names = "".join(f"        {n} cluster_https;\n" for n in sorted(self.whitelist))
            return True, f"map $ssl_preread_server_name $entrance_https_target {{\n{names}        default x;\n}}\n"
        if "headscale users list" in command:
            if not self.headscale_running:
                return True, f"\n{SEPARATOR}\n"
            nodes = [{"id": i, "given_name": name, "ip_addresses": [ip], "online": name not in self.tailscaled_stopped}
                     for i, (name, ip) in enumerate({"cloud": "100.64.0.1", **NODES}.items(), 1)]
            return True, f'[{{"id": 1, "name": "admin"}}]\n{SEPARATOR}\n{json.dumps(nodes)}\n'
        if command.startswith("tailscale status --json"):
            peers = {f"key{ip}": {"HostName": name, "TailscaleIPs": [ip]} for name, ip in NODES.items()}
            return True, json.dumps({"Peer": peers})
        if command.startswith("tailscale ping"):
            name = next(n for n, ip in NODES.items() if ip in command)
            if name in self.tailscaled_stopped:
                return True, "ping timed out"
            return True, f"pong from {name} ({NODES[name]}) via 192.0.2.1:41641 in 3ms"
        if "/dev/tcp/" in command:
            name = next(n for n, ip in NODES.items() if ip in command)
            return (name not in self.ingress_stopped | self.tailscaled_stopped), ""
        if "kubectl get nodes" in command:
            items = [{"kind": "Node", "metadata": {"name": n}, "status": {
                "conditions": [{"type": "Ready", "status": "False" if n in self.tailscaled_stopped else "True"}],
                "nodeInfo": {"kubeletVersion": "v1.35.3+k3s1"}}} for n in NODES]
            return True, json.dumps({"items": items})
        raise AssertionError(f"doctor ran a command the test world does not know: {command}")


def _failing(world: World) -> list[str]:
    return [hop.name for hop in diagnose(_config(), world) if hop.ok is False]


def test_healthy_cluster_every_hop_ok(capsys):
    world = World()
    hops = diagnose(_config(), world)
    assert [h for h in hops if not h.ok] == []
    names = {h.name for h in hops}
    assert {"dns blog.example.org", "entrance cloud", "whitelist cloud", "sni blog.example.org via cloud",
            "headscale cloud", "node t420", "tailnet cloud -> t420", "ingress t420 from cloud", "k3s t420"} <= names
    assert print_report(hops) == 0
    assert "doctor: 0 failing" in capsys.readouterr().out


@pytest.mark.parametrize(("breakage", "hop", "fix_mentions"), [
    (lambda w: setattr(w, "nginx_running", False), "entrance cloud", "systemctl status nginx"),
    (lambda w: w.whitelist.discard("blog.example.org"), "sni blog.example.org via cloud", "run the deploy"),
    (lambda w: w.whitelist.add("pass.example.org"), "whitelist cloud", "changed by hand"),
    (lambda w: setattr(w, "headscale_running", False), "headscale cloud", "systemctl status headscale"),
    (lambda w: w.tailscaled_stopped.add("t420"), "node t420", "systemctl status tailscaled"),
    (lambda w: w.ingress_stopped.add("t410"), "ingress t410 from cloud", "traefik"),
    (lambda w: w.dns.pop("blog.example.org"), "dns blog.example.org", f"A record of blog.example.org at {ENTRANCE_IP}"),
    (lambda w: w.dns.update({"blog.example.org": ["198.51.100.7"]}), "dns blog.example.org", "A record"),
    (lambda w: setattr(w, "certificate_valid", False), "sni blog.example.org via cloud", "cert-manager"),
], ids=["nginx-stopped", "removed-from-whitelist", "private-name-exposed", "headscale-stopped",
        "tailscaled-stopped", "ingress-stopped", "no-dns-record", "dns-elsewhere", "bad-certificate"])
def test_one_broken_hop_is_named_alone_with_its_fix(breakage, hop, fix_mentions, capsys):
    world = World()
    breakage(world)
    hops = diagnose(_config(), world)
    failing = [h for h in hops if h.ok is False]
    assert [h.name for h in failing] == [hop]
    assert fix_mentions in failing[0].fix
    assert hops[0] is failing[0]  # failing first
    assert print_report(hops) == 1
    assert capsys.readouterr().out.splitlines()[0].startswith(f"FAIL  {hop}: ")


def test_hops_behind_a_failed_one_say_so_instead_of_failing():
    world = World(tailscaled_stopped={"t420"})
    hops = {h.name: h for h in diagnose(_config(), world)}
    for name in ("tailnet cloud -> t420", "ingress t420 from cloud", "k3s t420"):
        assert hops[name].ok is None and '"node t420" failed first' in hops[name].detail
    assert hops["tailnet cloud -> t410"].ok and hops["k3s t410"].ok


def test_headscale_down_leaves_the_tailnet_checked_from_the_entrance():
    """Running nodes keep talking while headscale is down: doctor still pings them (their addresses from the
    entrance's own tailscale), so only headscale fails."""
    hops = {h.name: h for h in diagnose(_config(), World(headscale_running=False))}
    assert hops["node t420"].ok is None
    assert hops["tailnet cloud -> t420"].ok and hops["ingress t420 from cloud"].ok


def test_unreachable_host_fails_its_ssh_hop_and_skips_what_needs_it():
    hops = {h.name: h for h in diagnose(_config(), World(unreachable={"master"}))}
    assert [n for n, h in hops.items() if h.ok is False] == ["ssh master"]
    assert "ssh_hostname" in hops["ssh master"].fix
    assert hops["k3s t420"].ok is None


def test_resolve_override_replaces_dns_and_says_so():
    world = World(dns={})
    hops = {h.name: h for h in diagnose(_config(), world, {"blog.example.org": [ENTRANCE_IP]})}
    assert hops["dns blog.example.org"].ok and "from --resolve" in hops["dns blog.example.org"].detail


def test_doctor_changes_nothing_on_the_hosts():
    world = World()
    diagnose(_config(), world)
    readers = ("true", "nginx -T", "command -v headscale", "tailscale status --json", "tailscale ping", "timeout 5",
               "command -v k3s")
    assert world.commands and all(command.startswith(readers) for _, command in world.commands), world.commands


def test_a_raw_tcp_apps_name_gets_no_certificate_check() -> None:
    """A public raw TCP app (minecraft) has no Ingress, so no certificate: doctor resolves its name and checks the
    whitelist, but does not ask its name for a valid certificate on 443."""
    apps = [*APPS, {"name": "minecraft", "hostname": "mc.example.org", "public": True, "tcp_port": 25565}]
    data = {"domain": "example.org", "headscale_url": "https://headscale.example.org",
            "tailnet_domain": "tailnet.example.org", "apps": apps}
    config = validate_inventory(Inventory(
        (["cloud", "master", "t420", "t410"], data),
        headscale=([("cloud", {"ssh_hostname": ENTRANCE_IP})], {}), entrance=(["cloud"], {}),
        k3s_servers=(["master"], {}), k3s_agents=(["t420", "t410"], {}),
    ))
    world = World(dns={"blog.example.org": [ENTRANCE_IP], "mc.example.org": [ENTRANCE_IP]},
                  whitelist={"blog.example.org", "mc.example.org"})
    names = {hop.name for hop in diagnose(config, world) if hop.ok}
    assert {"dns mc.example.org", "whitelist cloud", "sni blog.example.org via cloud"} <= names
    assert "sni mc.example.org via cloud" not in {hop.name for hop in diagnose(config, world)}


def _backed_up_config():
    data = {"domain": "example.org", "headscale_url": "https://headscale.example.org",
            "tailnet_domain": "tailnet.example.org", "apps": APPS,
            "app_backup_s3": {"endpoint": "s3.example.org", "bucket": "b"}, "app_backup_password": {"env": "P"},
            "s3_access_key": {"env": "A"}, "s3_secret_key": {"env": "S"}}
    return validate_inventory(Inventory(
        (["cloud", "master", "t420", "t410"], data),
        headscale=([("cloud", {"ssh_hostname": ENTRANCE_IP})], {}), entrance=(["cloud"], {}),
        k3s_servers=(["master"], {}), k3s_agents=(["t420", "t410"], {}),
    ), require_secrets=False)


class BackedUpWorld(World):
    """The healthy world, whose first server also lists the apps' snapshots (``listing`` after the Job ran)."""

    listing: str = ""

    def run(self, host: str, command: str, timeout: float | None = None) -> tuple[bool, str]:
        if "backups-list" in command:
            self.commands.append((host, command))
            return True, self.listing
        return super().run(host, command, timeout)


def test_each_backed_up_app_is_a_hop_late_ones_fail_with_the_fix():
    from datetime import UTC, datetime, timedelta

    recent = (datetime.now(UTC) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S.5+00:00")
    old = (datetime.now(UTC) - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%S.5+00:00")
    world = BackedUpWorld()
    world.listing = (f"created blog 2026-01-01T00:00:00Z\ncreated vault 2026-01-01T00:00:00Z\n== blog\n"
                     f'[{{"time": "{recent}", "short_id": "aaaa1111", "summary": {{"total_bytes_processed": 5}}}}]\n'
                     f'== vault\n[{{"time": "{old}", "short_id": "bbbb2222"}}]\nsucceeded\n')
    hops = {hop.name: hop for hop in diagnose(_backed_up_config(), world)}
    assert hops["backup blog"].ok and "1 snapshot, newest aaaa1111 3 h ago" in hops["backup blog"].detail
    assert hops["backup vault"].ok is False and "late" in hops["backup vault"].detail
    assert "kubectl -n app-vault get cronjob" in hops["backup vault"].fix
    # One listing Job for all apps, on the first server only.
    assert [h for h, c in world.commands if "backups-list" in c] == ["master"]
    world.listing = "Error from server: S3 refused\nfailed\n"
    hops = {hop.name: hop for hop in diagnose(_backed_up_config(), world)}
    assert hops["backup blog"].ok is False and "could not be listed" in hops["backup blog"].detail


def test_no_backup_hops_without_app_backup_s3():
    assert not [hop for hop in diagnose(_config(), World()) if hop.name.startswith("backup")]
