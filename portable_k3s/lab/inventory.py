"""pyinfra inventory groups for the running lab, read from its state file (see ``inventories/lab.py``)."""

from __future__ import annotations

from typing import Any

from .artifacts import HEADSCALE_PATH, K3S_PATH, TAILSCALE_PATH
from .core import Lab, LabConfig, LabError


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
        "k3s_lan": "home",
        "k3s_kubeconfig": str(lab.state_dir / "kubeconfig.yaml"),
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
        }
        for group in host.groups:
            groups.setdefault(group, []).append((host.name, data))
    return groups
