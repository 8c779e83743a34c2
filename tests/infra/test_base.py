"""Checks for the base deploy (portable_k3s.deploys.base) on every host."""

from __future__ import annotations


def _sshd_settings(host) -> dict[str, str]:
    out = host.check_output("sshd -T 2>/dev/null || /usr/sbin/sshd -T")
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_sshd_accepts_only_keys(host):
    settings = _sshd_settings(host)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitemptypasswords"] == "no"
    assert settings["authenticationmethods"] == "publickey"


def test_root_login_by_key_only(host, base_data):
    expected = {"prohibit-password": {"without-password", "prohibit-password"}, "no": {"no"}}
    assert _sshd_settings(host)["permitrootlogin"] in expected[base_data["ssh_permit_root_login"]]


def test_sshd_running(host):
    assert host.service("ssh").is_running


def test_hostname(host, inventory_host, base_data):
    assert host.check_output("hostname") == (base_data["hostname"] or inventory_host.name)


def test_base_packages_installed(host, base_data):
    for name in [*base_data["base_packages"], "systemd-timesyncd"]:
        assert host.package(name).is_installed, name


def test_time_sync(host, base_data):
    """timesyncd runs with our servers; in a container (the lab) it cannot run — the clock is the container
    host's — so there the check is that it is configured, enabled, and skipped for exactly that reason."""
    config = host.file("/etc/systemd/timesyncd.conf.d/portable-k3s.conf")
    assert config.exists
    assert f"NTP={' '.join(base_data['ntp_servers'])}" in config.content_string
    assert host.service("systemd-timesyncd").is_enabled
    container = host.run("systemd-detect-virt --container").stdout.strip()
    if container and container != "none":
        shown = host.check_output("systemctl show -p ConditionResult -p ConditionTimestamp systemd-timesyncd")
        assert "ConditionResult=no" in shown, shown
        assert "ConditionVirtualization=!container" in host.check_output(
            "systemctl cat systemd-timesyncd.service"
        )
    else:
        assert host.service("systemd-timesyncd").is_running
        assert host.check_output("timedatectl show -p NTP --value") == "yes"
