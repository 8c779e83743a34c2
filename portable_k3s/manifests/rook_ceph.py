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


def render_cluster(nodes: list[tuple[str, str]], replicas: int, toolbox: bool = True) -> str:
    """
    The CephCluster using each node's device, a replicated block pool, the ``ceph-block`` default StorageClass and
    rook's toolbox.

    + nodes: ``(node name, external_ssd)`` of the k3s nodes with a device
    + replicas: copies of each block, one per host (3 monitors from 3 replicas on, else 1)
    + toolbox: rook's toolbox Deployment ``rook-ceph-tools`` (``ceph``, ``rados``, ``rbd`` against the cluster),
      as rook's ``deploy/examples/toolbox.yaml`` has it, on the cluster's Ceph image
    """
    return render(
        "manifests/ceph-cluster.yaml.j2", image=IMAGES["ceph"], replicas=replicas,
        nodes=[(node, device_name(device)) for node, device in nodes], mons=3 if replicas >= 3 else 1,
        mgrs=2 if replicas >= 2 else 1, toolbox=toolbox, toolbox_script=TOOLBOX_SCRIPT,
    )


# The toolbox's start (rook's toolbox.yaml runs the same inline): ceph.conf from the monitors' endpoints (rewritten
# when they move) and the admin keyring from rook's Secret.
TOOLBOX_SCRIPT = """CEPH_CONFIG=/etc/ceph/ceph.conf
MON_CONFIG=/etc/rook/mon-endpoints
KEYRING_FILE=/etc/ceph/keyring
write_endpoints() {
  endpoints=$(cat "$MON_CONFIG")
  mon_endpoints=$(echo "$endpoints" | sed 's/[a-z0-9_-]\\+=//g')
  echo "$(date) writing mon endpoints to $CEPH_CONFIG: $endpoints"
  printf '[global]\\nmon_host = %s\\n\\n[client.admin]\\nkeyring = %s\\n' "$mon_endpoints" "$KEYRING_FILE" \\
    > "$CEPH_CONFIG"
}
printf '[%s]\\nkey = %s\\n' "$ROOK_CEPH_USERNAME" "$ROOK_CEPH_SECRET" > "$KEYRING_FILE"
write_endpoints
initial=$(stat -c %Z "$(realpath "$MON_CONFIG")")
while true; do
  latest=$(stat -c %Z "$(realpath "$MON_CONFIG")")
  if [ "$latest" != "$initial" ]; then write_endpoints; initial=$latest; fi
  sleep 10
done
"""
