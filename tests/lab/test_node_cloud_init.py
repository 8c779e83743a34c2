"""Lab tier: a k3s agent from cloud-init user-data (the seed's cloud VMs). `python -m portable_k3s cloud-init
inventories/lab.py --host NEW` mints a single-use tailnet key on headscale and a k3s join token on the server (the
lab's K3S STAND-IN implements `k3s token create --ttl` like k3s) and writes the user-data; Debian's own cloud-init,
installed on a fresh lab host, checks it with `cloud-init schema` and runs it on the host's first boot from a NoCloud
seed. The host joins the tailnet and k3s without any deploy; a later deploy finds tailscale and k3s as it would have
left them. Runs last (it grows the lab)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import yaml

from .conftest import REPO

# Lab-only cloud-init settings: the lab's hosts have a static LAN the lab sets up, SSH host keys the lab pins, apt
# through the lab's proxy, and no locales (a Debian cloud image has them). A real cloud VM keeps cloud-init's defaults.
LAB_CLOUD_CFG = """\
datasource_list: [NoCloud]
locale: false
network: {config: disabled}
ssh_deletekeys: false
disable_root: false
apt: {preserve_sources_list: true}
"""

TAILNET_AND_K3S_OPERATIONS = {
    "Install tailscale (static)", "tailscaled unit", "tailscaled starts once the network is online",
    "Reload systemd for tailscaled", "tailscaled settings", "Run tailscaled", "Restart tailscaled after a change",
    "Join the tailnet", "Agent binary", "Agent cluster token", "Agent config", "Agent unit",
    "Agent: reload systemd", "Agent: restart after a config, token or unit change", "Agent: run",
}


def _when(value: dict | str) -> datetime:
    """A timestamp of headscale's JSON: {"seconds": N} or an RFC 3339 string."""
    if isinstance(value, dict):
        return datetime.fromtimestamp(int(value["seconds"]), UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.moves_lab
def test_cloud_init_user_data_joins_a_fresh_host_on_its_first_boot(lab, lab_env, pyinfra, converged_entrance,
                                                                    tmp_path):
    lab.up(len(lab.hosts()) + 1, timeout=120)
    new = lab.hosts()[-1].name
    user_data = tmp_path / "user-data"
    made = subprocess.run(
        [sys.executable, "-m", "portable_k3s", "cloud-init", "inventories/lab.py", "--host", new, "--expires", "30m",
         "-o", str(user_data)], cwd=REPO, env=lab_env, capture_output=True, text=True, timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert oct(user_data.stat().st_mode & 0o777) == "0o600"
    document = yaml.safe_load(user_data.read_text())
    files = {f["path"]: f["content"] for f in document["write_files"]}
    key, token = files["/var/lib/portable-k3s/join/tailscale-authkey"], files["/etc/rancher/k3s/token"].strip()
    assert key not in made.stdout + made.stderr and token not in made.stdout + made.stderr
    assert token.startswith("K10") and "::server:" not in token  # a bootstrap token, not the cluster's own

    lab.ssh(new, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends cloud-init >/dev/null "
                 "|| (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                 "--no-install-recommends cloud-init >/dev/null)", timeout=600)
    lab.ssh(new, "install -d -m 0700 /var/lib/cloud/seed/nocloud && umask 077 && "
                 "cat > /var/lib/cloud/seed/nocloud/user-data", input=user_data.read_text())
    schema = lab.ssh(new, "cloud-init schema --config-file /var/lib/cloud/seed/nocloud/user-data 2>&1", check=False)
    assert schema.returncode == 0 and "Valid cloud-config" in schema.stdout, schema.stdout
    broken = lab.ssh(new, "sed 's/^runcmd:/runcmd: 5\\nunused:/' /var/lib/cloud/seed/nocloud/user-data > /root/bad "
                          "&& cloud-init schema --config-file /root/bad 2>&1", check=False)
    assert broken.returncode != 0 and "runcmd" in broken.stdout, broken.stdout  # the check can fail
    lab.ssh(new, f"printf 'instance-id: lab-{new}\\nlocal-hostname: {new}\\n' > /var/lib/cloud/seed/nocloud/meta-data "
                 "&& cat > /etc/cloud/cloud.cfg.d/99-portable-k3s-lab.cfg", input=LAB_CLOUD_CFG)

    lab.reboot(new, timeout=240)  # cloud-init's first boot: the boot ends once cloud-final has run the join

    status = lab.ssh(new, "cloud-init status --long", check=False).stdout
    assert "status: done" in status, status + lab.ssh(new, "tail -40 /var/log/cloud-init-output.log").stdout
    assert f"portable-k3s: {new} has joined" in lab.ssh(new, "cat /var/log/cloud-init-output.log").stdout
    assert lab.ssh(new, "ls -A /var/lib/portable-k3s/join").stdout == ""  # the key and template are gone
    ipv4 = lab.ssh(new, "tailscale ip -4").stdout.strip()
    assert yaml.safe_load(lab.ssh(new, "cat /etc/rancher/k3s/config.yaml").stdout)["node-ip"] == ipv4
    nodes = json.loads(lab.ssh("h1", "headscale nodes list -o json").stdout)
    node = next(n for n in nodes if n["given_name"] == new or n.get("name") == new)
    assert "tag:k3s" in (node.get("tags") or node.get("forced_tags") or [])
    keys = json.loads(lab.ssh("h1", "headscale preauthkeys list -o json").stdout or "[]")
    newest = max(keys, key=lambda k: int(k["id"]))
    assert newest["used"] and not newest.get("reusable"), newest
    lifetime = _when(newest["expiration"]) - _when(newest["created_at"])
    assert 29 * 60 <= lifetime.total_seconds() <= 31 * 60, newest  # --expires 30m
    lab.ssh("h2", f"for i in $(seq 60); do k3s kubectl get nodes | grep -q '^{new} .* Ready ' && exit 0; sleep 0.5; "
                  "done; k3s kubectl get nodes; exit 1")
    tokens = json.loads(lab.ssh("h2", "k3s token list -o json").stdout)
    mine = [t for t in tokens if t["description"] == f"portable-k3s cloud-init {new}"]
    assert len(mine) == 1 and token.endswith(mine[0]["id"] + "." + token.rsplit(".", 1)[1]), tokens

    run = pyinfra("--limit", new)  # the rest of the node (baseline, sshd) and the entrance
    assert run.returncode == 0, run.stderr[-4000:]
    changed = {name.rsplit(" | ", 1)[-1]: hosts for name, hosts in run.changed().items()}  # without the deploy
    # tailscale and k3s are as the deploy would have left them, except the token: the deploy gives agents the
    # cluster's own (the join token expires; k3s lets a joined node restart without it).
    assert set(changed) & TAILNET_AND_K3S_OPERATIONS == {
        "Agent cluster token", "Agent: restart after a config, token or unit change"}, changed
    assert changed["Point the entrance h1 at this node too"] == [new]
    assert f"server {ipv4}:443" in lab.ssh("h1", "nginx -T 2>/dev/null").stdout
    again = pyinfra()
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed() == {}, again.changed()
