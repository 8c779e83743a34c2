"""Lab tier: the tailnet, with the real headscale and tailscale built from their Go modules.

The lab serves the binaries from its artifact server (the same download-and-verify path as the upstream release
URLs). Tailscale's public DERP relays are out of reach here, so the lab uses headscale's embedded DERP over plain
http; each pair below reports whether it connected directly or through that relay.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import tempfile
import time

import pytest

# A whole pre-auth key: "hskey-auth-" + a 12-character prefix + "-" + the secret. headscale itself lists keys
# by their prefix only ("hskey-auth-<prefix>-***"), which is not a secret.
KEY_RE = re.compile(r"hskey-auth-[A-Za-z0-9_-]{12}-[A-Za-z0-9_-]{16,}")


@pytest.fixture(scope="module")
def converged(pyinfra):
    """The reference deploy has run (it is idempotent: on an already converged lab this changes nothing)."""
    run = pyinfra()
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def _nodes(lab) -> list[dict]:
    return json.loads(lab.ssh("h1", "headscale nodes list -o json").stdout or "null") or []


def _tailnet_ips(lab) -> dict[str, str]:
    return {n["given_name"]: next(a for a in n["ip_addresses"] if ":" not in a) for n in _nodes(lab)}


def test_every_node_joined_with_its_tags(lab, converged):
    nodes = {n["given_name"]: n for n in _nodes(lab)}
    assert set(nodes) == {h.name for h in lab.hosts()}
    assert nodes["h1"]["tags"] == ["tag:entrance"]
    for name in ("h2", "h3", "h4"):
        assert nodes[name]["tags"] == ["tag:k3s"]
    for host in lab.hosts():
        status = json.loads(lab.ssh(host.name, "tailscale status --json").stdout)
        assert status["BackendState"] == "Running", host.name


def test_the_tailscale_fact_reads_the_same_through_the_localapi_as_through_the_cli(lab, converged):
    """The Tailscale fact asks tailscaled's LocalAPI with one curl, and the CLI when that fails: on live nodes
    both ways give the same fact (each forced: the CLI's programs renamed away, or curl pointed at a socket
    that does not exist)."""
    from pyinfra.api import StringCommand

    from portable_k3s.facts.tailscale import TAILSCALED_SOCKET, Tailscale

    command = StringCommand(Tailscale().command()).get_raw_value()
    assert command.count("tailscale status") == 1 and command.count("tailscale debug prefs") == 1
    localapi_only = command.replace("tailscale status", "no-cli status").replace("tailscale debug", "no-cli debug")
    cli_only = command.replace(TAILSCALED_SOCKET, "/nonexistent/tailscaled.sock")
    for name in ("h1", "h3"):
        local = Tailscale().process(lab.ssh(name, localapi_only).stdout.splitlines())
        cli = Tailscale().process(lab.ssh(name, cli_only).stdout.splitlines())
        assert local == cli, name
        assert local["backend_state"] == "Running" and local["ipv4"] and local["prefs"]["ControlURL"], local


def test_every_pair_pings_over_the_tailnet(lab, converged):
    """Every pair, including the entrance (cloud) ↔ home nodes behind NAT with no port forwarding."""
    ips = _tailnet_ips(lab)
    paths = {}
    for a, b in itertools.permutations(sorted(ips), 2):
        out = lab.ssh(a, f"tailscale ping -c 20 --timeout 3s {ips[b]}", check=False).stdout
        pongs = [line for line in out.splitlines() if line.startswith("pong")]
        assert pongs, f"{a} -> {b}: no pong:\n{out}"
        paths[(a, b)] = "relayed (DERP)" if "via DERP" in pongs[-1] else "direct " + pongs[-1].split(" via ")[1]
    print("\n".join(f"{a} -> {b}: {how}" for (a, b), how in sorted(paths.items())))


def test_entrance_reaches_k3s_nodes_on_ingress_ports_only(lab, converged):
    ips = _tailnet_ips(lab)
    # A listener on the ingress port next to sshd, on the k3s server.
    lab.ssh("h2", "(timeout 60 nc -l -k -p 443 >/dev/null 2>&1 &) ; for i in $(seq 50); do "
                  "ss -ltn | grep -q ':443 ' && exit 0; sleep 0.1; done; exit 1")
    # The cloud reaches home through the relay first: let tailscale find its path before timing a connection.
    lab.ssh("h1", f"tailscale ping -c 10 --until-direct=false {ips['h2']}", check=False)
    assert lab.ssh("h1", f"nc -z -w 5 {ips['h2']} 443", check=False).returncode == 0
    assert lab.ssh("h1", f"nc -z -w 5 {ips['h2']} 22", check=False).returncode != 0, "the entrance reached ssh"
    # k3s nodes reach each other on any port.
    assert lab.ssh("h3", f"nc -z -w 5 {ips['h2']} 22", check=False).returncode == 0


def test_private_app_resolves_inside_the_tailnet_only(lab, converged):
    ingress = _tailnet_ips(lab)["h2"]  # no ingress_address in the lab: the first k3s server
    for host in ("h3", "h1"):
        out = lab.ssh(host, "getent hosts pass.example.org", check=False).stdout.split()
        assert out[:1] == [ingress], (host, out)
    # A public app is not a tailnet record.
    assert ingress not in lab.ssh("h3", "getent hosts blog.example.org", check=False).stdout
    # And outside the tailnet (this machine) the private name does not resolve to it.
    assert ingress not in subprocess.run(["getent", "hosts", "pass.example.org"], capture_output=True,
                                         text=True).stdout


def test_deleted_node_rejoins_alone_and_keys_stay_secret(lab, pyinfra, converged):
    """Delete h4 on the server; the next run re-joins exactly h4 with a fresh key. The key shows up in no
    output (-vvv, --diff), no process argv on h4 during the run, and no file that is not 0600."""
    before = {n["given_name"]: n for n in _nodes(lab)}
    lab.ssh("h1", f"headscale nodes delete --identifier {before['h4']['id']} --force")
    # The samples go to a file as they come: through a pipe read only at the end, the sampler would stall once the
    # pipe is full (a k3s node has many processes) and miss the join.
    samples = tempfile.TemporaryFile(mode="w+")
    sampler = subprocess.Popen(
        ["ssh", "-F", str(lab.ssh_config), "h4",
         "end=$(($(date +%s)+90)); while [ $(date +%s) -lt $end ] && [ ! -e /tmp/stop-sampler ]; do "
         "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo; done"],
        stdout=samples, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        time.sleep(1)
        run = pyinfra("-vvv", "--diff")
    finally:
        lab.ssh("h4", "touch /tmp/stop-sampler")
        sampler.wait(timeout=90)
        lab.ssh("h4", "rm -f /tmp/stop-sampler")
        samples.seek(0)
        argv = samples.read()
        samples.close()
    assert run.returncode == 0, run.stderr[-4000:]
    changed = run.changed()
    assert changed.pop("Tailscale node | Join the tailnet") == ["h4"], run.changed()
    # The re-join restarted tailscaled there, and with tailscale0 flannel's VXLAN device went: k3s makes it anew
    # once the restarted agent has its node's lease back from the server (seconds after systemd calls it started).
    restart_k3s = "Tailscale node | Restart k3s after tailscaled restarted (flannel's VXLAN device is on tailscale0)"
    assert changed.pop(restart_k3s) == ["h4"], run.changed()
    flannel = lab.ssh("h4", "for i in $(seq 60); do [ -e /sys/class/net/flannel.1 ] && exit 0; sleep 1; done; "
                            "ls /sys/class/net; exit 1", check=False)
    assert flannel.returncode == 0, f"no flannel.1 on h4 60 s after the k3s restart: {flannel.stdout.split()}"
    # h4 is a new node. headscale may give it its old address back (it was freed) or a new one; with a new one,
    # k3s on h4 (node-ip in its config, then a restart) and the entrance follow it in the same run. Nothing else
    # changes.
    after = {n["given_name"]: n for n in _nodes(lab)}
    ipv4 = next(a for a in after["h4"]["ip_addresses"] if ":" not in a)
    old_ipv4 = next(a for a in before["h4"]["ip_addresses"] if ":" not in a)
    if ipv4 != old_ipv4:
        for name in ("k3s | Agent config", "k3s | Agent: restart after a config, token or unit change"):
            assert changed.pop(name, None) == ["h4"], (name, run.changed())
    assert f"node-ip: {ipv4}" in lab.ssh("h4", "cat /etc/rancher/k3s/config.yaml").stdout
    assert changed in ({}, {"Entrance | Entrance nginx config": ["h1"],
                            "Entrance | Reload nginx after a config change": ["h1"]}), run.changed()
    print(f"\nre-joined h4: {old_ipv4} -> {ipv4}")
    assert set(after) == set(before) and after["h4"]["id"] != before["h4"]["id"]
    for name in ("h1", "h2", "h3"):
        assert after[name]["id"] == before[name]["id"], name

    assert "tailscale up" in argv, "the argv sampler saw nothing of the join"
    assert not KEY_RE.search(run.stdout + run.stderr), "a pre-auth key was printed"
    assert not KEY_RE.search(argv), "a pre-auth key was in a process argv"
    for host in lab.hosts():
        found = lab.ssh(host.name, f"grep -rlE '{KEY_RE.pattern}' /etc /root /run /tmp /var/lib "
                                   "2>/dev/null | xargs -r stat -c '%a %n'", check=False).stdout.split("\n")
        leaky = [line for line in found if line and not line.startswith("600 ")]
        assert not leaky, (host.name, leaky)
    keys = json.loads(lab.ssh("h1", "headscale preauthkeys list -o json").stdout or "[]")
    now = time.time()
    assert keys, "no pre-auth keys were minted"
    for key in keys:
        assert not key.get("reusable"), key
        assert key.get("used") or key["expiration"]["seconds"] <= now, f"an unused key is still valid: {key}"


def test_tailscaled_restarted_outside_a_run_gets_k3s_restarted_by_the_next_one(lab, pyinfra, converged):
    """What a deploy stopped between its tailscaled restart and its k3s restart leaves (or an upgrade, or a restart
    by hand): flannel's VXLAN device gone with tailscale0, k3s not told. The next run sees k3s older than tailscaled
    and restarts it on that node only; flannel.1 is back."""
    lab.ssh("h3", "systemctl restart tailscaled && sleep 1")
    assert lab.ssh("h3", "test -e /sys/class/net/flannel.1", check=False).returncode != 0  # the damage
    run = pyinfra()
    assert run.returncode == 0, run.stderr[-4000:]
    # k3s on h3 is restarted by this run: by the tailscale deploy when it still runs since before tailscaled's
    # restart, by the k3s deploy when it has exited meanwhile (it may, without its flannel interface).
    restart_k3s = "Tailscale node | Restart k3s after tailscaled restarted (flannel's VXLAN device is on tailscale0)"
    assert run.changed() in ({restart_k3s: ["h3"]}, {"k3s | Agent: run": ["h3"]}), run.changed()
    started = lab.ssh("h3", "systemctl show -p ActiveEnterTimestampMonotonic --value tailscaled k3s-agent").stdout
    tailscaled_since, k3s_since = (int(v) for v in started.split())
    assert k3s_since > tailscaled_since
    flannel = lab.ssh("h3", "for i in $(seq 60); do [ -e /sys/class/net/flannel.1 ] && exit 0; sleep 1; done; "
                            "ls /sys/class/net; exit 1", check=False)
    assert flannel.returncode == 0, f"no flannel.1 on h3 60 s after the k3s restart: {flannel.stdout.split()}"


def test_second_run_after_rejoin_changes_nothing(lab, pyinfra):
    before = {n: lab.ssh(n, "systemctl show -p ActiveState -p SubState -p NRestarts -p ExecMainStatus k3s-agent",
                         check=False).stdout.split() for n in ("h3", "h4")}
    run = pyinfra()
    assert run.returncode == 0, run.stderr[-4000:]
    if run.changed():  # what k3s did meanwhile, for whoever reads the failure
        print("k3s-agent before this run:", before)
        print(lab.ssh("h4", "journalctl -u k3s-agent --no-pager -o short-precise -n 3000 | grep -E "
                            "'systemd|k3s: |exited|panic|fatal|F[0-9]{4} ' | tail -n 40", check=False).stdout)
    assert run.changed() == {}, run.changed()
