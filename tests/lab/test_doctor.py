"""Lab tier: ``python -m portable_k3s doctor`` against the lab, healthy and then with one hop broken at a time.

The lab has no public DNS, so the public names are given with ``--resolve`` (doctor says so on the DNS lines), and
the apps' certificates come from the lab's CA (``--ca``; see tests/lab/public.py). The ingress is Traefik on every
k3s node, run by the lab's K3S STAND-IN around real Kubernetes.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
import time

import pytest

from .conftest import REPO
from .public import PUBLIC


def _doctor(lab, lab_env, served_apps) -> tuple[int, list[str]]:
    entrance = next(h.address for h in lab.hosts() if "entrance" in h.groups)
    apps = runpy.run_path(str(REPO / "group_data" / "all.py"))["apps"]
    resolve = [f"--resolve={app['hostname']}={entrance}" for app in apps if app.get("public")]
    proc = subprocess.run(
        [sys.executable, "-m", "portable_k3s", "doctor", "inventories/lab.py", *resolve,
         f"--ca={served_apps / 'ca.pem'}"],
        cwd=REPO, env=lab_env, capture_output=True, text=True, timeout=300,
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def _failing(lines: list[str]) -> list[str]:
    return [line.split(": ", 1)[0].removeprefix("FAIL  ") for line in lines if line.startswith("FAIL  ")]


def _until(lab, lab_env, served_apps, failing: list[str], within: float = 90) -> list[str]:
    """Run doctor until exactly ``failing`` hops fail (the tailnet and headscale take a moment to notice)."""
    deadline = time.monotonic() + within
    while True:
        code, lines = _doctor(lab, lab_env, served_apps)
        if _failing(lines) == failing and code == (1 if failing else 0):
            return lines
        if time.monotonic() > deadline:
            pytest.fail(f"doctor did not name exactly {failing}:\n" + "\n".join(lines))
        time.sleep(2)


def test_doctor_finds_a_healthy_path(lab, lab_env, served_apps):
    started = time.monotonic()
    lines = _until(lab, lab_env, served_apps, [])
    print(f"\ndoctor, healthy lab ({time.monotonic() - started:.1f} s):\n" + "\n".join(lines))
    assert any(line.startswith(f"ok    sni {PUBLIC} via h1: ") for line in lines)
    assert any(line.startswith("ok    tailnet h1 -> h3: ") for line in lines)
    assert any(line.startswith("ok    k3s h4: Ready") for line in lines)


def test_the_ingress_hint_names_the_traefik_pods_that_run(lab, served_apps):
    """The ingress hop's fix hint lists Traefik's pods by the label the chart gives them: run on the lab's server,
    it finds one running on every node."""
    from types import SimpleNamespace

    from portable_k3s.doctor import _ingress  # noqa: PLC0415 - the hint as doctor prints it

    closed = SimpleNamespace(run=lambda host, command: (False, ""))
    ok, _, hint = _ingress(closed, SimpleNamespace(name="h1"), SimpleNamespace(name="h3"), "100.64.0.9")
    assert not ok
    command = hint.split(": ", 1)[1].split(";")[0]
    assert command.startswith("kubectl -n kube-system get pods -l app.kubernetes.io/name=traefik"), hint
    columns = "-o custom-columns=PHASE:.status.phase,NODE:.spec.nodeName --no-headers"
    rows = [line.split() for line in lab.ssh("h2", f"k3s {command} {columns}").stdout.splitlines()]
    assert sorted(node for phase, node in rows if phase == "Running") == ["h2", "h3", "h4"], rows


BREAKS = [
    # (id, host, break it, repair it, the one hop doctor must name)
    ("tailscaled-stopped", "h3", "systemctl stop tailscaled", "systemctl start tailscaled", "node h3"),
    ("nginx-stopped", "h1", "systemctl stop nginx", "systemctl start nginx", "entrance h1"),
    ("removed-from-whitelist", "h1",
     f"cp /etc/nginx/nginx.conf /root/nginx.conf.doctor && sed -i '/^ *{PUBLIC} cluster_https;/d' /etc/nginx/nginx.conf"
     " && nginx -t -q && systemctl reload nginx",
     "cp /root/nginx.conf.doctor /etc/nginx/nginx.conf && systemctl reload nginx", f"sni {PUBLIC} via h1"),
    ("headscale-stopped", "h1", "systemctl stop headscale", "systemctl start headscale", "headscale h1"),
]


@pytest.mark.parametrize(("host", "breaking", "repair", "hop"), [b[1:] for b in BREAKS], ids=[b[0] for b in BREAKS])
def test_doctor_names_exactly_the_broken_hop(lab, lab_env, served_apps, host, breaking, repair, hop):
    lab.ssh(host, breaking)
    try:
        lines = _until(lab, lab_env, served_apps, [hop])
        assert lines[0].startswith(f"FAIL  {hop}: ") and " -- fix: " in lines[0], lines[0]
    finally:
        lab.ssh(host, repair)
    _until(lab, lab_env, served_apps, [])
