"""Every template in ``portable_k3s/templates`` renders, with StrictUndefined, from the context its
operation passes, and says what it must say."""

from __future__ import annotations

import configparser
import hashlib
from typing import Any

import jinja2
import pytest
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from portable_k3s import render as render_mod
from portable_k3s.operations import ssh, timesync
from portable_k3s.render import TEMPLATE_DIR, render, sha256

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
    info = {"dropin_sha256": None, "includes_dropins": True, "login_user": "admin", "authorized_keys": 1}
    return {"ssh.SshdHardening": {f"path={path}": info}}


def _timesyncd_facts(path: str = TIMESYNCD_PATH) -> dict:
    info = {"container": None, "config_sha256": None, "enabled": False, "active": False}
    return {"timesync.Timesyncd": {f"path={path}": info}}


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


def test_every_template_is_rendered_by_an_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    on_disk = {p.name for p in TEMPLATE_DIR.iterdir() if p.is_file()}
    assert on_disk, "no templates found"
    rendered = {name for name, _ in _operation_contexts(monkeypatch)}
    assert rendered == on_disk


def test_templates_render_strictly_from_operation_contexts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, context in _operation_contexts(monkeypatch):
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
