"""pyinfra inventory groups for the running lab, read from its state file (see ``inventories/lab.py``)."""

from __future__ import annotations

from typing import Any

from .core import Lab, LabConfig, LabError


def lab_groups(config: LabConfig | None = None) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Return ``{group: [(host, data), ...]}`` for every host of the lab, with SSH data pinned to the lab's
    own key and known_hosts (strict host key checking)."""
    lab = Lab(config or LabConfig.from_env())
    state = lab.load_state()
    if not state.get("hosts"):
        raise LabError(
            f"no lab at {lab.state_dir}: bring one up with `python -m portable_k3s.lab up` "
            "(or set PORTABLE_K3S_LAB_STATE_DIR)"
        )
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for host in lab.hosts():
        data = {
            "ssh_hostname": host.address,
            "ssh_user": "root",
            "ssh_key": str(lab.ssh_key),
            "ssh_known_hosts_file": str(lab.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "lab_site": host.site,
            "lab_artifact_url": lab.artifact_url,
        }
        for group in host.groups:
            groups.setdefault(group, []).append((host.name, data))
    return groups
