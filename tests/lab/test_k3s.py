"""Lab tier: k3s over the lab's real tailnet, deployed by the reference deploy — WITH THE K3S STAND-IN'S SUPERVISOR.

k3s itself cannot be downloaded on this machine. The lab serves a stand-in executable at k3s's release path
(portable_k3s/lab/k3s_standin, built from this repository, with a checksum list laid out like k3s's own): it
emulates k3s's own supervisor (config.yaml, certificates and join endpoints, token files, airgap images, the deploy
controller) around real Kubernetes from github.com/k3s-io/kubernetes at the pinned k3s's version, embedded etcd,
flannel and Debian's containerd (see tests/lab/test_kubernetes.py for pods and networking). These tests prove the
deploy's logic on real hosts: download + checksum, files and units, each node's real tailnet IP as its InternalIP,
one token everywhere and never in output, no change on a second run, a rolling upgrade in order with real drain
and uncordon, the airgap images imported, uninstall leaving nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from portable_k3s.lab.artifacts import K3S_PATH, kubernetes_fork_version, publish_k3s_standin
from portable_k3s.lab.images import BUSYBOX_IMAGE, PAUSE_IMAGE, STATIC_IMAGE, TRAEFIK_IMAGE
from portable_k3s.operations.k3s import REGISTRIES
from portable_k3s.versions import VERSIONS

from .public import PUBLIC_APP

REPO = Path(__file__).resolve().parents[2]
# The version the upgrade test bumps to. Its Kubernetes fork (v1.35.4-k3s1) is refused by the Go module proxy here,
# so the stand-in "v1.35.4+k3s1" is the same Kubernetes code built with that version string (as kubelet reports it).
NEXT = "v1.35.4+k3s1"
NODES = {"h2": "server", "h3": "agent", "h4": "agent"}


@pytest.fixture(scope="module")
def converged(pyinfra):
    run = pyinfra()
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def _tailnet_ips(lab) -> dict[str, str]:
    nodes = json.loads(lab.ssh("h1", "headscale nodes list -o json").stdout or "null") or []
    return {n["given_name"]: next(a for a in n["ip_addresses"] if ":" not in a) for n in nodes}


def _config(lab, name: str) -> dict[str, str]:
    import yaml

    return yaml.safe_load(lab.ssh(name, "cat /etc/rancher/k3s/config.yaml").stdout)


def _kubectl_nodes(lab) -> dict[str, dict]:
    out = lab.ssh("h2", "k3s kubectl get nodes -o json").stdout
    return {item["metadata"]["name"]: item for item in json.loads(out)["items"]}


def _wait_ready(lab, names, version: str) -> dict[str, dict]:
    script = (
        "for i in $(seq 60); do k3s kubectl get nodes -o json > /tmp/nodes.json && "
        + " && ".join(f"grep -q '\"name\": \"{n}\"' /tmp/nodes.json" for n in names)
        + " && break; sleep 0.5; done"
    )
    lab.ssh("h2", script)
    return _kubectl_nodes(lab)


def _ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def _internal_ips(node: dict) -> list[str]:
    return [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]


def test_the_stand_in_says_what_it_is(lab, converged):
    for name in NODES:
        version = lab.ssh(name, "k3s --version").stdout
        expected = f"k3s version {VERSIONS['k3s']} (portable-k3s lab stand-in, not k3s: real Kubernetes " \
                   f"{kubernetes_fork_version()} inside)"
        assert expected in version, (name, version)


def test_every_node_runs_k3s_with_its_real_tailnet_ip(lab, converged):
    ips = _tailnet_ips(lab)
    for name, role in NODES.items():
        unit = "k3s.service" if role == "server" else "k3s-agent.service"
        assert lab.ssh(name, f"systemctl is-active {unit}").stdout.strip() == "active", name
        assert lab.ssh(name, "stat -c %a /etc/rancher/k3s/config.yaml").stdout.strip() == "600", name
        config = _config(lab, name)
        assert config["node-ip"] == ips[name], (name, config)
        assert config["node-name"] == name
        assert config["flannel-iface"] == "tailscale0"
        assert config["token-file"] == "/etc/rancher/k3s/token"
        if role == "server":
            assert config["advertise-address"] == ips[name]
            assert ips[name] in config["tls-san"] and "cluster-init" in config
            assert "server" not in config
        else:
            assert config["server"] == f"https://{ips['h2']}:6443"
    # The agents joined the server over the tailnet with the token: their kubelets registered, Ready, at their
    # tailnet addresses.
    nodes = _wait_ready(lab, NODES, VERSIONS["k3s"])
    assert set(nodes) == set(NODES)
    for name, node in nodes.items():
        assert _ready(node), name
        assert _internal_ips(node) == [ips[name]], name


def test_one_token_everywhere_0600_and_never_printed(lab, pyinfra, converged):
    """Remove an agent's token: the next run copies the server's back (and restarts that agent only), with
    the token in no output (-vvv, --diff)."""
    passphrase = lab.ssh("h2", "cat /etc/rancher/k3s/token").stdout.strip()
    server_token = lab.ssh("h2", "cat /var/lib/rancher/k3s/server/token").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", passphrase), "the first server made a random token"
    assert re.fullmatch(r"K10[0-9a-f]{64}::server:" + passphrase, server_token)
    for name in ("h3", "h4"):  # agents hold the server's K10 form, which also pins the cluster CA
        assert lab.ssh(name, "cat /etc/rancher/k3s/token").stdout.strip() == server_token
    for name in NODES:
        assert lab.ssh(name, "stat -c %a /etc/rancher/k3s/token").stdout.strip() == "600", name

    lab.ssh("h4", "rm /etc/rancher/k3s/token")
    run = pyinfra("-vvv", "--diff")
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.changed() == {
        "k3s | Agent cluster token": ["h4"],
        "k3s | Agent: restart after a config, token or unit change": ["h4"],
    }, run.changed()
    assert lab.ssh("h4", "cat /etc/rancher/k3s/token").stdout.strip() == server_token
    output = run.stdout + run.stderr
    assert passphrase not in output, "the cluster token was printed"
    assert "Agent cluster token" in output  # the -vvv output is really there


def test_private_registries_are_written_0600_restart_k3s_and_the_password_is_never_printed(
    lab, pyinfra, converged, tmp_path
):
    """k3s_registries becomes /etc/rancher/k3s/registries.yaml on every k3s node, 0600, with the password read from
    its reference; k3s restarts to read it and comes back Ready; a second run changes nothing. (The lab pulls no
    image, so no mirror is contacted: the K3S STAND-IN does not turn the file into containerd's mirror config.)"""
    password = "lab-registry-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    secret = tmp_path / "registry-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    registries = {
        "mirrors": {"docker.io": {"endpoint": ["https://registry.lab.invalid:5000"]}},
        "configs": {"registry.lab.invalid:5000": {"auth": {"username": "lab", "password": {"file": str(secret)}},
                                                  "tls": {"insecure_skip_verify": True}}},
    }
    data = "k3s_registries=" + json.dumps(registries)
    try:
        run = pyinfra("--data", data, "-vvv", "--diff")
        assert run.returncode == 0, run.stderr[-4000:]
        assert password not in run.stdout + run.stderr, "the registry password was printed"
        changed = run.changed()
        assert sorted(changed.pop("k3s | Server private registries (registries.yaml)") +
                      changed.pop("k3s | Agent private registries (registries.yaml)")) == sorted(NODES)
        assert sorted(changed.pop("k3s | Server: restart after a config, token or unit change") +
                      changed.pop("k3s | Agent: restart after a config, token or unit change")) == sorted(NODES)
        assert changed == {}, changed
        for name in NODES:
            assert lab.ssh(name, f"stat -c '%a %U' {REGISTRIES}").stdout.split() == ["600", "root"], name
            written = yaml.safe_load(lab.ssh(name, f"cat {REGISTRIES}").stdout)
            assert written["mirrors"] == registries["mirrors"]
            assert written["configs"]["registry.lab.invalid:5000"]["auth"] == {"username": "lab", "password": password}
        _wait_ready(lab, NODES, VERSIONS["k3s"])
        again = pyinfra("--data", data)
        assert again.returncode == 0 and again.changed() == {}, again.changed()
    finally:
        for name in NODES:  # None leaves the file alone: take the test's file away (the stand-in never read it)
            lab.ssh(name, f"rm -f {REGISTRIES}")


def test_a_checksum_mismatch_installs_nothing_on_that_host(lab, pyinfra, converged):
    """A node without k3s whose pinned sha256 does not match the download: that host fails with the two
    checksums named, nothing is installed there, the others carry on; the next good run installs it."""
    lab.ssh("h4", "systemctl stop k3s-agent.service; rm -f /usr/local/bin/k3s /var/lib/portable-k3s/releases/k3s")
    bad = "deadbeef" * 8  # (all digits would reach the deploy as an int: pyinfra parses --data values)
    run = pyinfra("--data", f"k3s_sha256={bad}", "--limit", "h4")
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert f"expected {bad}; nothing was installed" in output, output[-3000:]
    assert lab.ssh("h4", "test -e /usr/local/bin/k3s", check=False).returncode != 0
    again = pyinfra()
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed().get("k3s | Agent binary") == ["h4"], again.changed()
    assert lab.ssh("h4", "systemctl is-active k3s-agent.service").stdout.strip() == "active"


def test_a_version_bump_upgrades_one_node_at_a_time_servers_first(lab, pyinfra, converged):
    publish_k3s_standin(NEXT, lab.config.cache_dir, lab.artifact_dir)
    lab.ssh("h2", "rm -f /var/lib/rancher/k3s/standin/kubectl.log")
    run = pyinfra("--data", json_arg({"k3s": NEXT}))
    assert run.returncode == 0, run.stderr[-4000:]
    # The lab is airgapped: each node also takes the new release's images, before its binary (whose restart imports
    # them), and restarts once.
    upgraded = {"k3s | Server airgap images": ["h2"], "k3s | Server binary": ["h2"],
                "k3s | Agent airgap images": ["h3", "h4"], "k3s | Agent binary": ["h3", "h4"]}
    assert run.changed() == upgraded, run.changed()
    calls = [line.split(" ", 1)[1] for line in lab.ssh("h2", "cat /var/lib/rancher/k3s/standin/kubectl.log")
             .stdout.splitlines()]
    steps = [c.split()[0] + " " + c.split()[1] for c in calls if c.split()[0] in ("drain", "uncordon")]
    # One node at a time: each drain is followed by that node's uncordon before the next drain; servers first.
    assert steps[:2] == ["drain h2", "uncordon h2"], steps
    assert sorted(steps[2:4] + steps[4:6]) == sorted(["drain h3", "uncordon h3", "drain h4", "uncordon h4"])
    for i in (2, 4):
        assert steps[i].split()[0] == "drain" and steps[i + 1] == "uncordon " + steps[i].split()[1], steps
    nodes = _kubectl_nodes(lab)
    for name in NODES:
        assert nodes[name]["status"]["nodeInfo"]["kubeletVersion"] == NEXT, name
        assert not nodes[name]["spec"].get("unschedulable"), name
        assert NEXT in lab.ssh(name, "k3s --version").stdout
    again = pyinfra("--data", json_arg({"k3s": NEXT}))
    assert again.returncode == 0 and again.changed() == {}, again.changed()
    # Back to the pinned version, the same way (the other lab tests expect the pin).
    back = pyinfra()
    assert back.returncode == 0, back.stderr[-4000:]
    assert back.changed() == upgraded
    assert all(n["status"]["nodeInfo"]["kubeletVersion"] == VERSIONS["k3s"] for n in _kubectl_nodes(lab).values())


def test_airgap_images_are_verified_installed_and_imported_pinned(lab, converged):
    """The lab is airgapped (k3s_airgap_images): the release's images tarball (pause, CoreDNS, Traefik, the static
    apps' nginx and a test busybox, built by portable_k3s/lab/images.py) lands where k3s imports images at start,
    checked against the release's sha256 list, and containerd holds its images pinned (kubelet's image GC keeps
    them)."""
    release = lab.artifact_dir / K3S_PATH / VERSIONS["k3s"]
    tarball = next(release.glob("k3s-airgap-images-*.tar.zst"))
    path = "/var/lib/rancher/k3s/agent/images/k3s-airgap-images.tar.zst"  # one name on every machine
    for name in NODES:
        remote_sha = lab.ssh(name, f"sha256sum {path}").stdout.split()[0]
        assert remote_sha == hashlib.sha256(tarball.read_bytes()).hexdigest(), name
        images = lab.ssh(name, "k3s ctr -n k8s.io images ls").stdout
        for image in (PAUSE_IMAGE, BUSYBOX_IMAGE, TRAEFIK_IMAGE, STATIC_IMAGE):
            line = next((ln for ln in images.splitlines() if ln.startswith(image + " ")), "")
            assert "io.cri-containerd.pinned=pinned" in line, (name, image, images)


def test_uninstall_leaves_nothing_and_a_normal_run_reinstalls(lab, lab_env, converged):
    """k3s_state = "absent" with k3s_remove_data on an agent: its unit, binary, config, token and data go; a second
    such run changes nothing; the next normal run installs it again and it rejoins. The agent is one that does not
    hold the public app's volume (a local-path volume goes with its node's data; the later tests serve the app)."""
    agent = _agent_without_the_public_volume(lab)
    extra = {agent: {"k3s_state": "absent", "k3s_remove_data": True}}
    env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps(extra)}

    def run() -> dict:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("pyinfra")), "tests/lab/node_baseline_inventory.py", "deploy.py",
             "-y", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        return _changed(proc.stdout)

    assert run() == {"k3s | Agent: remove k3s": [agent]}
    left = lab.ssh(agent, "ls -d /etc/systemd/system/k3s* /usr/local/bin/k3s /etc/rancher /var/lib/rancher "
                         "/var/lib/portable-k3s/releases/k3s 2>/dev/null; pgrep -fa 'k3s (server|agent)'",
                   check=False).stdout
    assert left == "", left
    # Nothing of the pod network stays either: no CNI or flannel interface, no kube-proxy, flannel or CNI rule.
    links = lab.ssh(agent, "ls /sys/class/net").stdout.split()
    assert not {"cni0", "flannel.1"} & set(links), links
    rules = lab.ssh(agent, "iptables-save | grep -cE '^-A (KUBE-|CNI-|FLANNEL)' || true").stdout.strip()
    assert rules == "0", rules
    assert run() == {}
    back = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), "inventories/lab.py", "deploy.py", "-y", "--json"],
        cwd=REPO, env=lab_env, capture_output=True, text=True, timeout=600,
    )
    assert back.returncode == 0, back.stderr[-4000:]
    assert _changed(back.stdout).get("k3s | Agent binary") == [agent]
    assert agent in _wait_ready(lab, NODES, VERSIONS["k3s"])


def _agent_without_the_public_volume(lab) -> str:
    claim = json.loads(lab.ssh("h2", f"k3s kubectl -n app-{PUBLIC_APP} get pvc {PUBLIC_APP} -o json").stdout)
    node = None
    if claim["spec"].get("volumeName"):  # bound once its pod was scheduled
        volume = json.loads(lab.ssh("h2", f"k3s kubectl get pv {claim['spec']['volumeName']} -o json").stdout)
        node = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0]
    return next(name for name in ("h4", "h3") if name != node)


def _changed(json_output: str) -> dict[str, list[str]]:
    from .conftest import PyinfraRun

    return PyinfraRun(0, json_output, "").changed()


def test_the_admin_kubeconfig_is_fetched_0600_with_the_servers_tailnet_address(lab, converged):
    import os
    import stat

    path = lab.state_dir / "kubeconfig.yaml"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert f"server: https://{_tailnet_ips(lab)['h2']}:6443" in text and "127.0.0.1" not in text


def json_arg(versions: dict[str, str]) -> str:
    return "versions=" + json.dumps(versions)


def test_no_k3s_process_argv_holds_the_token(lab, converged):
    passphrase = lab.ssh("h2", "cat /etc/rancher/k3s/token").stdout.strip()
    for name in NODES:
        argv = subprocess.run(
            ["ssh", "-F", str(lab.ssh_config), name, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
            capture_output=True, text=True,
        ).stdout
        assert passphrase not in argv, name


def test_native_tailnet_mode_gives_k3s_its_own_join_key_and_back(lab, pyinfra, converged):
    """k3s_tailnet_mode "native": every k3s node gets a vpn-auth-file (0600) with a key minted on headscale,
    config.yaml names it instead of node-ip/flannel-iface, headscale approves and allows the pod network; the
    key is in no output; a second run changes nothing; back to "manual", the key file is removed. The k3s here
    is the STAND-IN: it reads vpn-auth-file like k3s does (tailscale up only when tailscale is not running) and
    reports tailscale's IPv4; flannel's route advertisement is what only a real k3s does."""
    native = ("--data", "k3s_tailnet_mode=native")
    run = pyinfra("-vvv", "--diff", *native)
    assert run.returncode == 0, run.stderr[-4000:]
    changed = run.changed()
    assert changed["k3s | Server: k3s's own tailnet join settings (native mode)"] == ["h2"], changed
    assert changed["k3s | Agent: k3s's own tailnet join settings (native mode)"] == ["h3", "h4"], changed
    assert changed["k3s | Agent: restart after a config, token or unit change"] == ["h3", "h4"], changed
    ips = _tailnet_ips(lab)
    headscale_url = json.loads(lab.ssh("h2", "tailscale debug prefs").stdout)["ControlURL"]
    output = run.stdout + run.stderr
    join_keys = []
    for name in NODES:
        assert lab.ssh(name, "stat -c %a /etc/rancher/k3s/vpn-auth").stdout.strip() == "600", name
        auth = lab.ssh(name, "cat /etc/rancher/k3s/vpn-auth").stdout.strip()
        match = re.fullmatch(r"name=tailscale,joinKey=([^,]+),controlServerURL=(\S+)", auth)
        assert match and match.group(2) == headscale_url, (name, auth)
        assert match.group(1) not in output, f"{name}'s join key was printed"
        join_keys.append(match.group(1))
        config = _config(lab, name)
        assert config["vpn-auth-file"] == "/etc/rancher/k3s/vpn-auth"
        assert "node-ip" not in config and "flannel-iface" not in config, config
    policy = lab.ssh("h1", "cat /etc/headscale/policy.hujson").stdout
    assert '"10.42.0.0/16"' in policy, policy
    nodes = _wait_ready(lab, NODES, VERSIONS["k3s"])
    for name, node in nodes.items():  # the stand-in took its address from tailscale, as k3s does
        assert _internal_ips(node) == [ips[name]], name

    again = pyinfra(*native)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed() == {}, again.changed()

    back = pyinfra()
    assert back.returncode == 0, back.stderr[-4000:]
    for name in NODES:
        assert lab.ssh(name, "test -e /etc/rancher/k3s/vpn-auth", check=False).returncode != 0, name
        assert _config(lab, name)["node-ip"] == ips[name]
    assert '"10.42.0.0/16"' not in lab.ssh("h1", "cat /etc/headscale/policy.hujson").stdout
    # The removed files' keys were never used: they are expired on headscale, not left valid.
    listed = json.loads(lab.ssh("h1", "headscale preauthkeys list -o json").stdout or "[]")
    now = time.time()
    for secret in join_keys:
        (key,) = [k for k in listed if secret.startswith(k["key"].rstrip("*"))]
        assert key["expiration"]["seconds"] <= now, key
