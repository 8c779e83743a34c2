"""cloud-init user-data: what it writes and runs, offline. Debian's ``cloud-init schema`` and a real first boot of the
user-data on a fresh host are in tests/lab/test_node_cloud_init.py."""

from __future__ import annotations

import datetime
import subprocess

import pytest
import yaml
from pyinfra.api import HiddenValue, Inventory

from portable_k3s.__main__ import main
from portable_k3s.cloud_init import (
    JOIN_DIR,
    JOIN_SCRIPT,
    NODE_IP_PLACEHOLDER,
    CloudInitError,
    Credentials,
    check_expires,
    header,
    joinable,
    render_user_data,
)
from portable_k3s.config import validate_inventory
from portable_k3s.operations import k3s

KEY = "hskey-auth-0123456789abcdef-SECRET"
TOKEN = "K10" + "c" * 64 + "::abcdef.0123456789abcdef"
BASE = {"headscale_url": "https://headscale.example.org", "tailscale_install": "static",
        "tailscale_download_url": "https://artifacts.example.org/tailscale",
        "k3s_download_url": "https://artifacts.example.org/k3s"}


def _user_data(groups=("k3s_agents",), **data):
    credentials = Credentials(HiddenValue(KEY), HiddenValue(TOKEN), "100.64.0.2")
    text = render_user_data("vm1", list(groups), {**BASE, **data}, credentials, header("vm1", 1800))
    return text, yaml.safe_load(text)


def _files(document):
    return {f["path"]: f for f in document["write_files"]}


def test_user_data_is_cloud_config_that_runs_the_join_script_once():
    text, document = _user_data()
    assert text.startswith("#cloud-config\n")
    assert document["hostname"] == "vm1" and document["runcmd"] == [[JOIN_SCRIPT]]
    assert document["packages"] == ["curl", "ca-certificates"]  # cloud-init installs them before runcmd
    files = _files(document)
    assert files[JOIN_SCRIPT]["permissions"] == "0700"
    assert all(f["owner"] == "root:root" for f in files.values())


def test_secrets_are_only_in_0600_files():
    text, document = _user_data()
    files = _files(document)
    holding = {path for path, f in files.items() if KEY in f["content"] or TOKEN in f["content"]}
    assert holding == {f"{JOIN_DIR}/tailscale-authkey", k3s.TOKEN}
    assert {files[path]["permissions"] for path in holding} == {"0600"}
    assert files[k3s.TOKEN]["content"] == TOKEN + "\n"
    assert text.count(KEY) == 1 and text.count(TOKEN) == 1  # nowhere else: not in the script, not in a comment
    assert "--auth-key=file:" in files[JOIN_SCRIPT]["content"]  # never in argv


def test_the_agent_config_is_the_deploys_with_the_node_ip_filled_in_on_the_machine():
    _, document = _user_data(k3s_node_labels=["disk=ssd"], tailnet_domain="tailnet.example.org")
    template = _files(document)[f"{JOIN_DIR}/k3s-config.yaml"]
    assert template["permissions"] == "0600"
    config = yaml.safe_load(template["content"])
    assert config == {
        "node-name": "vm1", "node-ip": NODE_IP_PLACEHOLDER, "flannel-iface": "tailscale0",
        "server": "https://100.64.0.2:6443", "token-file": k3s.TOKEN, "node-label": ["disk=ssd"],
    }
    filled = template["content"].replace(NODE_IP_PLACEHOLDER, "100.64.0.9")
    deploy_would_write = k3s.config_text(k3s.config_settings(
        "agent", "vm1", {"node-label": ["disk=ssd"]}, "100.64.0.9", "100.64.0.2", "tailnet.example.org"))
    assert filled == deploy_would_write
    script = _files(document)[JOIN_SCRIPT]["content"]
    assert f'sed "s/{NODE_IP_PLACEHOLDER}/$ipv4/"' in script and "ipv4=$(tailscale ip -4)" in script


def test_the_join_script_is_valid_sh_and_installs_each_architectures_verified_release():
    _, document = _user_data()
    script = _files(document)[JOIN_SCRIPT]["content"]
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    for arch, k3s_name in (("amd64", "k3s"), ("arm64", "k3s-arm64"), ("arm", "k3s-armhf")):
        assert f"https://artifacts.example.org/tailscale/tailscale_1.98.10_{arch}.tgz.sha256" in script
        assert f"/v1.35.3%2Bk3s1/{k3s_name} " in script and f"sha256sum-{arch}.txt" in script
    assert script.count("sha256sum \"$tmp/dl\"") == 6  # every download checked before it is installed
    assert "tailscale up --reset --login-server=https://headscale.example.org" in script
    assert ("--hostname=vm1 --accept-dns=true --snat-subnet-routes=false --accept-routes=false "
            "--advertise-exit-node=false") in script
    assert "systemctl enable k3s-agent.service" in script and "timeout 300 systemctl start k3s-agent" in script
    assert script.index("tailscale up") < script.index("installing k3s") < script.index("start k3s-agent")


def test_native_mode_leaves_the_join_to_k3s():
    _, document = _user_data(k3s_tailnet_mode="native")
    files = _files(document)
    assert f"{JOIN_DIR}/tailscale-authkey" not in files and "tailscale up" not in files[JOIN_SCRIPT]["content"]
    assert files[k3s.VPN_AUTH]["permissions"] == "0600"
    assert files[k3s.VPN_AUTH]["content"] == f"name=tailscale,joinKey={KEY},controlServerURL=https://headscale.example.org\n"
    assert yaml.safe_load(files[k3s.CONFIG]["content"])["vpn-auth-file"] == k3s.VPN_AUTH


def test_apt_install_uses_the_tailscale_package_repository_of_the_machines_release():
    _, document = _user_data(tailscale_install="apt")
    files = _files(document)
    script = files[JOIN_SCRIPT]["content"]
    assert "/etc/systemd/system/tailscaled.service" not in files  # the package brings its unit
    assert '"https://pkgs.tailscale.com/stable/debian/${VERSION_CODENAME}.noarmor.gpg"' in script
    assert 'apt-get install -y -q "tailscale=1.98.10"' in script
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)


def test_an_exit_node_gets_the_tailnet_only():
    _, document = _user_data(groups=("exit_nodes",))
    files = _files(document)
    script = files[JOIN_SCRIPT]["content"]
    assert "--advertise-exit-node=true" in script and "k3s-agent" not in script and "installing k3s" not in script
    assert k3s.TOKEN not in files


def _config():
    return validate_inventory(Inventory(
        (["cloud", "master", "vm1", "pi"], {"domain": "example.org", "headscale_url": "https://hs.example.org",
                                          "tailnet_domain": "tailnet.example.org"}),
        headscale=(["cloud"], {}), entrance=(["cloud"], {}), k3s_servers=(["master"], {}),
        k3s_agents=(["vm1"], {}), exit_nodes=(["pi"], {}),
    ), require_secrets=False)


def test_only_agents_and_exit_nodes_can_be_set_up_by_user_data():
    config = _config()
    assert joinable(config, "vm1") == ["k3s_agents"]
    assert joinable(config, "pi") == ["exit_nodes"]
    with pytest.raises(CloudInitError, match=r"master is in k3s_servers.*expected one of: vm1, pi.*--limit master"):
        joinable(config, "master")
    with pytest.raises(CloudInitError, match=r"'vm9' is not in the inventory \(hosts user-data can set up: vm1, pi"):
        joinable(config, "vm9")


@pytest.mark.parametrize("value", ["0m", "1d", "25h", "1h30m", "", "h"])
def test_expiry_must_be_minutes_or_hours_up_to_a_day(value):
    with pytest.raises(CloudInitError, match="--expires"):
        check_expires(value)


def test_expiry_and_header():
    assert check_expires("30m") == 1800 and check_expires("24h") == 86400
    now = datetime.datetime(2026, 11, 26, 16, 0, tzinfo=datetime.UTC)
    assert "expires 2026-11-26 16:30 UTC" in header("vm1", 1800, now)


def test_the_command_refuses_a_server_before_connecting_anywhere(capsys):
    # inventories/home.py's addresses reach nothing: an attempt to connect would fail differently
    assert main(["cloud-init", "inventories/home.py", "--host", "master"]) == 2
    err = capsys.readouterr().err
    assert "master is in home, k3s_servers" in err and "expected one of: t420, t410, pi" in err
    assert main(["cloud-init", "inventories/home.py", "--host", "t420", "--expires", "3d"]) == 2
    assert "--expires: '3d'" in capsys.readouterr().err
