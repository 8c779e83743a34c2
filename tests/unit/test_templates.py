"""Every template in ``portable_k3s/templates`` renders, with StrictUndefined, from the context its
operation (or deploy) passes, and says what it must say."""

from __future__ import annotations

import configparser
import hashlib
import shlex
import subprocess
from typing import Any

import jinja2
import pytest
import yaml
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from portable_k3s import render as render_mod
from portable_k3s.config import App
from portable_k3s.deploys import entrance as entrance_deploy
from portable_k3s.deploys import headscale as headscale_deploy
from portable_k3s.deploys import tailscale as tailscale_deploy
from portable_k3s.operations import headscale as headscale_ops
from portable_k3s.operations import ssh, timesync
from portable_k3s.render import TEMPLATE_DIR, render, sha256
from tests.fake_connector import FakeConnector

SSHD_PATH = ssh.HARDENING_DROPIN
TIMESYNCD_PATH = timesync.TIMESYNCD_DROPIN


def _captured_contexts(
    monkeypatch: pytest.MonkeyPatch, module: Any, op: Any, facts: dict, **kwargs: Any
) -> list[tuple[str, dict]]:
    """Run ``op`` (an operation of ``module``) against fake facts and return the (template, context)
    pairs it renders."""
    calls: list[tuple[str, dict]] = []

    def spy(name: str, **context: Any) -> str:
        calls.append((name, context))
        return render(name, **context)

    monkeypatch.setattr(module, "render", spy)
    state = FakeState()
    host = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(host):
        list(op._inner(**kwargs))
    return calls


def _sshd_facts(path: str = SSHD_PATH) -> dict:
    info = {"includes_dropins": True, "login_user": "admin", "authorized_keys": 1}
    return {"ssh.SshdHardening": info, "files.FileStates": {f"paths=('{path}',)": {}}}


def _timesyncd_facts(path: str = TIMESYNCD_PATH) -> dict:
    unit = {"systemd-timesyncd.service": {"active": False, "enabled": "disabled"}}
    return {"timesync.Timesyncd": {"container": None}, "files.FileStates": {f"paths=('{path}',)": {}},
            "services.ServiceStates": {"units=('systemd-timesyncd.service',)": unit}}


# One entry per (operation call): the template it renders and the context it passes.
def _operation_contexts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    contexts: list[tuple[str, dict]] = []
    for permit in ssh.PERMIT_ROOT_LOGIN:
        contexts += _captured_contexts(monkeypatch, ssh, ssh.hardened, _sshd_facts(), permit_root_login=permit)
    contexts += _captured_contexts(
        monkeypatch, timesync, timesync.timesyncd, _timesyncd_facts(), servers=["ntp1.example", "ntp2.example"]
    )
    contexts += _captured_contexts(
        monkeypatch,
        timesync,
        timesync.timesyncd,
        _timesyncd_facts(),
        servers=["ntp1.example"],
        fallback=["fb1.example", "fb2.example"],
    )
    return contexts


TAILNET_DATA = {"headscale_url": "https://hs.example.org", "tailnet_domain": "tail.example.org"}
# Fact answers the deploys' pyinfra operations need on a fake Debian host (other commands answer nothing).
DEPLOY_FACT_RESPONSES = {r"^uname -s$": "Linux", r"^uname -m$": "x86_64", r"command -v useradd": "/usr/sbin/useradd"}


def _planned_deploy_contexts(
    monkeypatch: pytest.MonkeyPatch, connector: type[FakeConnector], deploy: Any, hosts: list, **kwargs: Any
) -> list[tuple[str, dict]]:
    """Plan ``deploy`` on ``@fake`` hosts and return the (template, context) pairs it renders. A
    ``headscale_host`` argument names an inventory host."""
    calls: list[tuple[str, dict]] = []

    def spy(name: str, **context: Any) -> str:
        calls.append((name, context))
        return render(name, **context)

    monkeypatch.setattr(headscale_deploy, "render", spy)
    monkeypatch.setattr(tailscale_deploy, "render", spy)
    connector.responses.update(DEPLOY_FACT_RESPONSES)
    state = State(Inventory((hosts, TAILNET_DATA)), Config())
    connect_all(state)
    if "headscale_host" in kwargs:
        kwargs["headscale_host"] = state.inventory.get_host(kwargs["headscale_host"])
    add_deploy(state, deploy, **kwargs)
    return calls


# One entry per template a deploy renders itself (and passes to files.content as text), per host.
def _deploy_contexts(monkeypatch: pytest.MonkeyPatch, connector: type[FakeConnector]) -> list[tuple[str, dict]]:
    policy = headscale_deploy.tailnet_policy(admins=["admin"], ingress_ports=[80, 443], routes={})
    contexts = _planned_deploy_contexts(
        monkeypatch,
        connector,
        headscale_deploy.headscale_server,
        [
            ("@fake/hs-tailscale-derp", {}),
            (
                "@fake/hs-embedded-derp",
                {
                    "tailnet_derp": "embedded",
                    "headscale_derp_ipv4": "203.0.113.10",
                    "tailnet_nameservers": ["1.1.1.1", "2606:4700:4700::1111"],
                },
            ),
        ],
        policy=policy,
    )
    contexts += _planned_deploy_contexts(
        monkeypatch,
        connector,
        tailscale_deploy.tailscale_node,
        [
            ("@fake/ts-apt", {}),
            (
                "@fake/ts-static",
                {
                    "tailscale_install": "static",
                    "tailscaled_env": {"TS_DEBUG_FIREWALL_MODE": "nftables"},
                    "tailscale_mtu": 1420,
                    "tailscale_upload_logs": True,
                },
            ),
        ],
        headscale_host="@fake/ts-apt",
    )
    # The entrance renders its config from the backends' addresses inside its operation; its renderer:
    entrance_calls: list[tuple[str, dict]] = []

    def spy(name: str, **context: Any) -> str:
        entrance_calls.append((name, context))
        return render(name, **context)

    monkeypatch.setattr(entrance_deploy, "render", spy)
    entrance_deploy.render_entrance(
        [App("blog", "blog.example.org", public=True), App("mc", "mc.example.org", public=True, tcp_port=25565)],
        dict(entrance_deploy.ENTRANCE_DEFAULTS), ["100.64.0.2"],
    )
    return contexts + entrance_calls


def _directives(text: str) -> dict[str, list[str]]:
    """sshd_config-style ``Keyword value`` lines (comments and blank lines skipped), keyword → values."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, value = stripped.partition(" ")
        found.setdefault(keyword, []).append(value.strip())
    return found


def _timesyncd(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_every_template_is_rendered_by_an_operation(
    monkeypatch: pytest.MonkeyPatch, fake_connector: type[FakeConnector]
) -> None:
    on_disk = {p.name for p in TEMPLATE_DIR.iterdir() if p.is_file()}
    assert on_disk, "no templates found"
    rendered = {name for name, _ in _operation_contexts(monkeypatch) + _deploy_contexts(monkeypatch, fake_connector)}
    assert rendered == on_disk


def test_deploys_render_their_templates_with_the_host_data(
    monkeypatch: pytest.MonkeyPatch, fake_connector: type[FakeConnector]
) -> None:
    contexts = _deploy_contexts(monkeypatch, fake_connector)
    configs = [context for name, context in contexts if name == "headscale.yaml.j2"]
    base = {"server_url": "https://hs.example.org", "listen_addr": "0.0.0.0:8080", "base_domain": "tail.example.org"}
    assert sorted(configs, key=lambda context: context["derp"]) == [
        {
            **base,
            "derp": "embedded",
            "derp_ipv4": "203.0.113.10",
            "nameservers": ["1.1.1.1", "2606:4700:4700::1111"],
        },
        {**base, "derp": "tailscale", "derp_ipv4": None, "nameservers": []},
    ]
    defaults = [context for name, context in contexts if name == "tailscaled.defaults.j2"]
    assert sorted(defaults, key=lambda context: len(context["env"])) == [
        {"port": 41641, "env": {}, "flags": "--no-logs-no-support"},
        {"port": 41641, "env": {"TS_DEBUG_FIREWALL_MODE": "nftables", "TS_DEBUG_MTU": "1420"}, "flags": ""},
    ]
    # The unit file is only rendered for the static install (the Debian package ships its own).
    assert [name for name, _ in contexts].count("tailscaled.service.j2") == 1
    assert [name for name, _ in contexts].count("headscale.service.j2") == 2


def test_templates_render_strictly_from_operation_contexts(
    monkeypatch: pytest.MonkeyPatch, fake_connector: type[FakeConnector]
) -> None:
    for name, context in _operation_contexts(monkeypatch) + _deploy_contexts(monkeypatch, fake_connector):
        text = render(name, **context)
        assert text.endswith("\n") and not text.endswith("\n\n"), name
        assert "{{" not in text and "{%" not in text, name
        # Every variable the template uses is in the context: dropping any one of them is an error.
        for key in context:
            reduced = {k: v for k, v in context.items() if k != key}
            with pytest.raises(jinja2.UndefinedError):
                render(name, **reduced)


def test_render_uses_strict_undefined() -> None:
    assert render_mod._env.undefined is jinja2.StrictUndefined
    with pytest.raises(jinja2.UndefinedError):
        render("sshd_hardening.conf.j2")


@pytest.mark.parametrize("permit", ["prohibit-password", "no"])
def test_sshd_hardening_dropin(permit: str) -> None:
    directives = _directives(render("sshd_hardening.conf.j2", permit_root_login=permit))
    assert all(len(values) == 1 for values in directives.values()), directives
    flat = {key: values[0] for key, values in directives.items()}
    assert flat["PermitRootLogin"] == permit
    assert flat["PasswordAuthentication"] == "no"
    assert flat["KbdInteractiveAuthentication"] == "no"
    assert flat["PermitEmptyPasswords"] == "no"
    assert flat["PubkeyAuthentication"] == "yes"
    assert flat["AuthenticationMethods"] == "publickey"
    # A drop-in must not change sshd's listening setup or pull in other files.
    assert not {"Port", "ListenAddress", "Include", "Match"} & set(flat)


def test_sshd_hardening_default_text() -> None:
    text = render("sshd_hardening.conf.j2", permit_root_login="prohibit-password")
    assert "PasswordAuthentication no\n" in text
    assert "PermitRootLogin prohibit-password\n" in text
    assert text.startswith("# Managed by portable-k3s")


def test_timesyncd_servers_only() -> None:
    text = render("timesyncd.conf.j2", servers=["0.debian.pool.ntp.org", "1.debian.pool.ntp.org"], fallback=[])
    parser = _timesyncd(text)
    assert parser.sections() == ["Time"]
    assert parser["Time"]["NTP"] == "0.debian.pool.ntp.org 1.debian.pool.ntp.org"
    assert "FallbackNTP" not in parser["Time"]
    assert "NTP=0.debian.pool.ntp.org 1.debian.pool.ntp.org\n" in text


def test_timesyncd_with_fallback() -> None:
    text = render("timesyncd.conf.j2", servers=["ntp.example"], fallback=["fb1.example", "fb2.example"])
    parser = _timesyncd(text)
    assert parser.sections() == ["Time"]
    assert dict(parser["Time"]) == {"NTP": "ntp.example", "FallbackNTP": "fb1.example fb2.example"}


def test_sha256_is_the_hex_digest_sha256sum_prints() -> None:
    assert sha256("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256("PermitRootLogin no\n") == hashlib.sha256(b"PermitRootLogin no\n").hexdigest()


def _headscale_config(derp: str, nameservers: list[str], derp_ipv4: str | None = None) -> dict[str, Any]:
    text = render(
        "headscale.yaml.j2",
        server_url="https://hs.example.org:8443",
        listen_addr="127.0.0.1:8080",
        derp=derp,
        derp_ipv4=derp_ipv4,
        base_domain="tail.example.org",
        nameservers=nameservers,
    )
    assert text.startswith("# Managed by portable-k3s")
    config = yaml.safe_load(text)
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("derp", ["tailscale", "embedded"])
@pytest.mark.parametrize("nameservers", [[], ["1.1.1.1", "2606:4700:4700::1111"]], ids=["own-dns", "nameservers"])
def test_headscale_config(derp: str, nameservers: list[str]) -> None:
    config = _headscale_config(derp, nameservers)
    assert config["server_url"] == "https://hs.example.org:8443"
    assert config["listen_addr"] == "127.0.0.1:8080"
    # The files the deploy and the operations write are the ones headscale reads.
    assert config["policy"] == {"mode": "file", "path": headscale_deploy.POLICY}
    assert config["dns"]["extra_records_path"] == headscale_deploy.EXTRA_RECORDS == headscale_ops.EXTRA_RECORDS
    assert config["dns"]["magic_dns"] is True
    assert config["dns"]["base_domain"] == "tail.example.org"
    assert config["dns"]["nameservers"]["global"] == nameservers
    # Overriding the nodes' DNS needs upstream resolvers to send them to.
    assert config["dns"]["override_local_dns"] is bool(nameservers)
    assert config["derp"]["server"]["enabled"] is (derp == "embedded")
    if derp == "embedded":
        assert config["derp"]["urls"] == []
        assert config["derp"]["auto_update_enabled"] is False
    else:
        assert config["derp"]["urls"] == ["https://controlplane.tailscale.com/derpmap/default"]
        assert config["derp"]["auto_update_enabled"] is True
    assert "ipv4" not in config["derp"]["server"]
    assert config["prefixes"] == {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48", "allocation": "sequential"}


def test_headscale_config_embedded_derp_public_ipv4() -> None:
    config = _headscale_config("embedded", [], derp_ipv4="203.0.113.10")
    assert config["derp"]["server"]["ipv4"] == "203.0.113.10"
    assert config["derp"]["server"]["enabled"] is True
    assert config["derp"]["server"]["stun_listen_addr"] == "0.0.0.0:3478"


def _unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_headscale_unit() -> None:
    text = render("headscale.service.j2")
    unit = _unit(text)
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    # The binary release.installed puts in place, with the config the deploy writes.
    assert service["ExecStart"] == f"/usr/local/bin/headscale serve -c {headscale_deploy.CONFIG}"
    assert (service["User"], service["Group"]) == ("headscale", "headscale")
    # A policy-only change is applied with a reload (SIGHUP), not a restart.
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ProtectSystem"] == "strict"
    # headscale writes its state and its CLI socket: both are writable under ProtectSystem=strict.
    config = _headscale_config("tailscale", [])
    writable = service["ReadWritePaths"].split()
    assert config["database"]["sqlite"]["path"].startswith(service["WorkingDirectory"] + "/")
    assert service["WorkingDirectory"] in writable
    socket_dir = config["unix_socket"].rsplit("/", 1)[0]
    assert socket_dir in writable
    assert socket_dir.removeprefix("/var") == "/run/" + service["RuntimeDirectory"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_tailscaled_unit() -> None:
    unit = _unit(render("tailscaled.service.j2"))
    service = unit["Service"]
    assert service["EnvironmentFile"] == tailscale_deploy.DEFAULTS_FILE
    # The static release's tailscaled, with the port and flags from the defaults file.
    assert service["ExecStart"].startswith("/usr/local/sbin/tailscaled ")
    assert "--port=${PORT}" in service["ExecStart"].split()
    assert service["ExecStart"].endswith(" $FLAGS")
    assert service["ExecStopPost"] == "/usr/local/sbin/tailscaled --cleanup"
    assert service["Type"] == "notify"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _env_file(text: str) -> dict[str, str]:
    """An EnvironmentFile's assignments (comments and blank lines skipped), as systemd and sh read them."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        (assignment,) = shlex.split(line)
        key, _, value = assignment.partition("=")
        assert key.isidentifier(), line
        values[key] = value
    return values


def test_tailscaled_defaults_without_extra_environment() -> None:
    text = render("tailscaled.defaults.j2", port=41641, env={}, flags="--no-logs-no-support")
    assert _env_file(text) == {"PORT": "41641", "FLAGS": "--no-logs-no-support"}
    assert text.startswith("# Managed by portable-k3s")


def test_tailscaled_defaults_with_extra_environment() -> None:
    env = {"TS_DEBUG_FIREWALL_MODE": "nftables", "HTTPS_PROXY": "http://proxy.lan:3128"}
    text = render("tailscaled.defaults.j2", port=0, env=env, flags="")
    assert _env_file(text) == {"PORT": "0", "FLAGS": "", **env}
    assert text.endswith('HTTPS_PROXY="http://proxy.lan:3128"\n')


def test_headscale_backup_copies_each_archive_to_s3_signed_and_without_the_keys_in_argv() -> None:
    from portable_k3s.deploys.headscale import s3_url

    url = s3_url({"endpoint": "s3.example.org", "bucket": "backups", "folder": "/cluster/headscale/"})
    assert url == "https://s3.example.org/backups/cluster/headscale/"
    assert s3_url({"endpoint": "10.0.0.1:9000", "bucket": "b", "insecure": True}) == "http://10.0.0.1:9000/b/"
    script = render("headscale-backup.sh.j2", dir="/var/backups/headscale", keep=14,
                    s3={"url": url, "region": "eu-central-1"})
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    upload = script[script.index("curl "):]
    assert "--aws-sigv4 'aws:amz:eu-central-1:s3'" in upload and '-K "$CREDENTIALS_DIRECTORY/s3"' in upload
    assert '-H "x-amz-content-sha256: $sha"' in upload  # the payload is signed, not sent as UNSIGNED-PAYLOAD
    assert script.index("mv ") < script.index("curl ")  # the local archive exists whatever S3 answers
    service = render("headscale-backup.service.j2", script="/x", credential="/etc/portable-k3s/headscale-backup-s3")
    assert "LoadCredential=s3:/etc/portable-k3s/headscale-backup-s3" in service
    assert "curl" not in render("headscale-backup.sh.j2", dir="/d", keep=1, s3=None)
