"""rook-ceph: the operator's Helm chart, and a CephCluster on the nodes' external SSDs with a default StorageClass."""

from __future__ import annotations

from ..render import render
from ..versions import CHARTS, IMAGES


def render_operator() -> str:
    """The rook-ceph operator's namespace and HelmChart (with its CRDs)."""
    repo, version = CHARTS["rook-ceph"]
    return render("manifests/rook-ceph.yaml.j2", repo=repo, chart="rook-ceph", version=version, values="")


def device_name(path: str) -> str:
    """How rook names a device: ``sdb`` for ``/dev/sdb``, a full path for ``/dev/disk/by-id/…``."""
    rest = path.removeprefix("/dev/")
    return rest if "/" not in rest else path


def render_cluster(nodes: list[tuple[str, str]], replicas: int) -> str:
    """
    The CephCluster using each node's device, a replicated block pool and the ``ceph-block`` default StorageClass.

    + nodes: ``(node name, external_ssd)`` of the k3s nodes with a device
    + replicas: copies of each block, one per host (3 monitors from 3 replicas on, else 1)
    """
    return render(
        "manifests/ceph-cluster.yaml.j2", image=IMAGES["ceph"], replicas=replicas,
        nodes=[(node, device_name(device)) for node, device in nodes], mons=3 if replicas >= 3 else 1,
        mgrs=2 if replicas >= 2 else 1,
    )
