"""Downtime alerts: the probe script run for real by ``sh`` here, with a scripted ``curl`` on its PATH (the apps'
answers and ntfy's, and a log of every curl argv); and the alerts keys' validation."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from portable_k3s.render import render
from tests.unit.test_config import problems_of, with_data

NAMES = ["blog.example.org", "example.org"]
TOKEN = "tk_unit0123456789abcdef"  # noqa: S105 - a test token, looked for in every argv

# Answers "$CODE_<name with _ for .>" (default 200) for app probes; ntfy posts succeed unless NTFY_DOWN is set.
FAKE_CURL = r"""#!/bin/sh
printf '%s\n' "$*" >> "$LOG"
post="" next=""
for a in "$@"; do
  [ -n "$next" ] && message="$a" && next=""
  case "$a" in https://*) url="$a" ;; --data-binary) post=1 next=1 ;; esac
done
case "$post${url:-}" in
  https://*)
    host=${url#https://}; host=${host%%:*}; var=CODE_$(echo "$host" | tr . _)
    eval "code=\${$var:-200}"
    eval "flaky=\${FLAKY_$(echo "$host" | tr . _):-0}"
    if [ "$flaky" -gt 0 ]; then
      n=$(cat "$LOG.$host" 2>/dev/null || echo 0); echo $((n + 1)) > "$LOG.$host"
      [ "$n" -lt "$flaky" ] && code=000
    fi
    printf '%s' "$code"; [ "$code" = 000 ] && exit 28; exit 0 ;;
esac
[ -n "${NTFY_DOWN:-}" ] && exit 7
printf '%s\n' "$message" >> "$POSTS"
"""


@pytest.fixture
def probe(tmp_path: Path):
    return _probe(tmp_path, retry=0)


def _probe(tmp_path: Path, retry: int):
    bin_dir, state, creds = tmp_path / "bin", tmp_path / "state", tmp_path / "creds"
    for d in (bin_dir, state, creds):
        d.mkdir()
    (bin_dir / "curl").write_text(FAKE_CURL)
    (bin_dir / "curl").chmod(0o755)
    (creds / "ntfy-auth").write_text(f"Authorization: Bearer {TOKEN}\n")
    script = tmp_path / "app-probe"
    script.write_text(render("alerts/app-probe.sh.j2", names=NAMES, url="https://ntfy.example.org/alerts",
                             timeout=10, retry=retry, port=443, title="portable-k3s (cloud)"))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log, posts = tmp_path / "curl.log", tmp_path / "posts"

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        full = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE_DIRECTORY": str(state),
                "CREDENTIALS_DIRECTORY": str(creds), "LOG": str(log), "POSTS": str(posts), **env}
        return subprocess.run(["sh", str(script)], env=full, capture_output=True, text=True, timeout=30)

    run.posts = lambda: posts.read_text().splitlines() if posts.exists() else []  # type: ignore[attr-defined]
    run.argv = lambda: log.read_text() if log.exists() else ""  # type: ignore[attr-defined]
    return run


def test_all_up_says_nothing(probe):
    assert probe().returncode == 0
    assert probe.posts() == []


def test_one_message_when_apps_go_down_and_one_when_they_come_back(probe):
    down = {"CODE_blog_example_org": "000", "CODE_example_org": "502"}  # no answer; a 5xx from the ingress
    probe(**down)
    probe(**down)
    assert probe.posts() == ["down: blog.example.org example.org"]
    probe()
    probe()
    assert probe.posts() == ["down: blog.example.org example.org", "back up: blog.example.org example.org"]


def test_a_404_is_up_and_a_mixed_change_is_one_message(probe):
    probe(CODE_blog_example_org="000")
    probe(CODE_example_org="503", CODE_blog_example_org="404")
    assert probe.posts() == ["down: blog.example.org", "down: example.org; back up: blog.example.org"]


def test_an_undelivered_alert_is_sent_at_the_next_probe(probe):
    failed = probe(CODE_example_org="000", NTFY_DOWN="1")
    assert failed.returncode != 0 and "could not reach ntfy" in failed.stderr
    assert probe.posts() == []
    probe(CODE_example_org="000")
    assert probe.posts() == ["down: example.org"]


def test_an_app_that_answers_again_within_the_retry_window_is_no_outage(tmp_path):
    probe = _probe(tmp_path, retry=3)
    probe(FLAKY_blog_example_org="1")  # the first request fails, the one 3 s later answers
    assert probe.posts() == []
    probe(FLAKY_example_org="5")  # still failing after the window: down
    assert probe.posts() == ["down: example.org"]


def test_the_token_is_a_header_file_never_an_argument(probe):
    probe(CODE_example_org="000")
    argv = probe.argv()
    assert TOKEN not in argv
    assert "-H @" in argv and "ntfy-auth" in argv


def _problems(**data):
    return problems_of(with_data(**data))


@pytest.mark.parametrize(("data", "expected"), [
    ({"alerts_ntfy_url": "ntfy.sh/alerts"},
     "all.alerts_ntfy_url: 'ntfy.sh/alerts' is not an ntfy topic URL (expected https://HOST/TOPIC, e.g. "
     "https://ntfy.sh/my-cluster-alerts, or None for no alerts)"),
    ({"alerts_ntfy_url": "http://ntfy.example.org/alerts"},
     "all.alerts_ntfy_url: http://ntfy.example.org/alerts is plain http: the token and the alerts would travel in "
     "clear (expected https://…, or alerts_allow_http = True where that is fine)"),
    ({"alerts_interval": 2}, "all.alerts_interval: 2 is out of range (expected whole seconds 5-86400)"),
    ({"alerts_ntfy_token": "tk_literal"}, None),
], ids=["not-a-url", "plain-http", "interval", "literal-token"])
def test_bad_alerts_keys_are_named(data, expected):
    problems = _problems(**data)
    if expected is None:  # a literal secret is refused like every other secret
        assert any(p.startswith("all.alerts_ntfy_token: ") for p in problems), problems
    else:
        assert expected in problems, problems


def test_plain_http_is_fine_when_allowed():
    assert _problems(alerts_ntfy_url="http://10.0.0.1:8080/alerts", alerts_allow_http=True) == []
