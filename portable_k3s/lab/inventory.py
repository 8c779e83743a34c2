"""pyinfra inventory groups for the running lab, read from its state file (see ``inventories/lab.py``)."""

from __future__ import annotations

import os
import runpy
import secrets
from pathlib import Path
from typing import Any

from .artifacts import HEADSCALE_PATH, K3S_PATH, TAILSCALE_PATH
from .core import Lab, LabConfig, LabError

# The lab's S3 server runs on the cloud host h1: the "off-site" VM the home hosts back up to.
LAB_S3_HOST = "h1"


def lab_groups(config: LabConfig | None = None) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Return ``{group: [(host, data), ...]}`` for every host of the lab, with SSH data pinned to the lab's
    own key and known_hosts (strict host key checking)."""
    lab = Lab(config or LabConfig.from_env())
    state = lab.load_state()
    lab.adopt(state)
    if not state.get("hosts"):
        raise LabError(
            f"no lab at {lab.state_dir}: bring one up with `python -m portable_k3s.lab up` "
            "(or set PORTABLE_K3S_LAB_STATE_DIR)"
        )
    lab_app_secrets(lab.state_dir)
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    headscale = next((h for h in lab.hosts() if "headscale" in h.groups), None)
    artifacts = lab.artifact_url
    # The lab's stand-ins for what a real cluster gets from the internet: plain http to headscale (no public
    # certificate here), headscale's embedded DERP relay (Tailscale's public ones are out of reach), and release
    # files from the lab's artifact server instead of the upstream URLs.
    tailnet: dict[str, Any] = {
        "headscale_allow_http": True,
        "headscale_url": f"http://{headscale.address}:8080" if headscale else None,
        "headscale_derp_ipv4": headscale.address if headscale else None,
        "tailnet_derp": "embedded",
        "headscale_download_url": f"{artifacts}/{HEADSCALE_PATH}",
        "tailscale_install": "static",
        "tailscale_download_url": f"{artifacts}/{TAILSCALE_PATH}",
        "tailscaled_env": {"TS_DEBUG_USE_DERP_HTTP": "true"},  # DERP over plain http: the lab has no TLS
        # k3s: the lab's K3S STAND-IN (see portable_k3s/lab/artifacts.py), served where k3s's releases would be.
        "k3s_download_url": f"{artifacts}/{K3S_PATH}",
        # The lab is airgapped, as a home cluster without internet would be: its system images (pause, CoreDNS,
        # a test busybox, built by portable_k3s/lab/images.py) come with the release, imported by k3s at start.
        "k3s_airgap_images": True,
        "k3s_lan": "home",
        "k3s_kubeconfig": str(lab.state_dir / "kubeconfig.yaml"),
        # Downtime alerts go to an ntfy URL on this machine, where the alert tests run an NTFY STAND-IN (ntfy is
        # not served by the Go module proxy here); plain http, with a lab token kept 0600 in the state dir.
        "alerts_ntfy_url": f"http://{lab.gateway('cloud')}:{lab_ntfy_port(lab.config)}/lab-alerts",
        "alerts_allow_http": True,
        # Probes run when the alert tests start them: a timer firing mid-test would show up in the other tests'
        # ingress logs.
        "alerts_interval": 86400,
        # An app that does not answer is asked again after 2 s, not 15: every lab probe has apps down (their
        # images cannot be pulled here), and the alert tests probe a dozen times.
        "alerts_retry": 2,
        "alerts_ntfy_token": {"file": str(lab_ntfy_token(lab.state_dir))},
        # Headscale's backups are also copied to the lab's S3 on h1, the "off-site" VM, where the backup test runs
        # it (gofakes3 behind the lab's AWS Signature V4 check, see portable_k3s/lab/s3.py); plain http, lab keys.
        "headscale_backup_s3": {"endpoint": lab_s3_endpoint(lab), "bucket": "lab-backups", "folder": "headscale",
                                "region": "lab-1", "insecure": True},
        # The apps' volumes are backed up there too (restic, one repository per app under apps/).
        "app_backup_s3": {"endpoint": lab_s3_endpoint(lab), "bucket": "lab-backups", "folder": "apps",
                          "region": "lab-1", "insecure": True},
        # And the k3s server's etcd snapshots (`k3s etcd-snapshot save` uploads each under etcd/, as k3s does).
        "k3s_etcd_s3": {"endpoint": lab_s3_endpoint(lab), "bucket": "lab-backups", "folder": "etcd",
                        "region": "lab-1", "insecure": True},
        "app_backup_password": {"file": str(lab_secret(lab.state_dir, "app-backup-password"))},
        "s3_access_key": {"file": str(lab_secret(lab.state_dir, "s3-access-key", "LAB"))},
        "s3_secret_key": {"file": str(lab_secret(lab.state_dir, "s3-secret-key"))},
    }
    for host in lab.hosts():
        data = {
            "ssh_hostname": host.address,
            "ssh_user": "root",
            "ssh_key": str(lab.ssh_key),
            "ssh_known_hosts_file": str(lab.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "lab_site": host.site,
            "lab_artifact_url": lab.artifact_url,
            **tailnet,
            **host.data,
        }
        for group in host.groups:
            groups.setdefault(group, []).append((host.name, data))
    return groups


def lab_ntfy_port(config: LabConfig) -> int:
    """The port the lab's ntfy URL points at, on the cloud gateway (next to the artifact server's)."""
    return config.artifact_port + 10


def lab_s3_port(config: LabConfig) -> int:
    """The port of the lab's S3 server, on ``LAB_S3_HOST`` (next to the artifact server's port number)."""
    return config.artifact_port + 11


def lab_s3_endpoint(lab: Lab) -> str:
    """``ADDRESS:PORT`` of the lab's S3 server: ``LAB_S3_HOST``'s cloud address (see ``portable_k3s.lab.s3``)."""
    host = next((h for h in lab.hosts() if h.name == LAB_S3_HOST), None)
    if host is None or not host.address:
        raise LabError(f"no lab host {LAB_S3_HOST} for the lab's S3 server (bring the lab up first)")
    return f"{host.address}:{lab_s3_port(lab.config)}"


def lab_ntfy_token(state_dir: Path) -> Path:
    """A throwaway ntfy token for the lab, made once per lab in ``<state_dir>/ntfy-token`` (0600)."""
    return lab_secret(state_dir, "ntfy-token", "tk_lab")


def lab_secret(state_dir: Path, name: str, prefix: str = "") -> Path:
    """A throwaway secret for the lab, made once per lab in ``<state_dir>/<name>`` (0600)."""
    file = state_dir / name
    if not file.exists():
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{prefix}{secrets.token_hex(14)}\n")
    return file


def lab_app_secrets(state_dir: Path, catalog: Path | None = None) -> dict[str, str]:
    """
    Throwaway values for the app catalog's secrets in the lab: every ``{"env": NAME}`` secret of an app in
    ``group_data/all.py`` (of the current directory) that the environment does not set gets a random value, made
    once per lab and kept in ``<state_dir>/app-secrets/NAME`` (0600), so runs stay identical. Returns the names set.
    """
    path = catalog or Path.cwd() / "group_data" / "all.py"
    if not path.is_file():
        return {}
    apps = runpy.run_path(str(path)).get("apps") or []
    names = sorted({ref["env"] for app in apps if isinstance(app, dict) for ref in (app.get("secrets") or {}).values()
                    if isinstance(ref, dict) and isinstance(ref.get("env"), str)})
    store = state_dir / "app-secrets"
    found: dict[str, str] = {}
    for name in names:
        if os.environ.get(name):
            continue
        file = store / name
        if not file.exists():
            store.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(f"lab-{secrets.token_hex(16)}")
        os.environ[name] = found[name] = file.read_text().strip()
    return found
