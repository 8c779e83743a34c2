"""Lab tier: a lab host runs Debian's containerd and runc as the k3s stand-in runs them (containerd's root at k3s's
path, linked to the host's containerd directory on this machine; state and socket under /run/k3s/containerd;
overlayfs snapshots), its containers land in the host's own cgroups, and kubelet finds what it needs: /dev/kmsg
readable and its kernel settings in place.

The test runs on a host where no k3s and no containerd run (a home host if one is free, h3 first), starts containerd
itself, and removes everything it made, so later tests see a clean host.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from portable_k3s.lab import Lab
from portable_k3s.lab.core import CONTAINERD_DIR, K3S_CONTAINERD_ROOT, KUBELET_SYSCTLS, LabHost

SOCKET = "/run/k3s/containerd/containerd.sock"
NAMESPACE = "lab-runtime-test"
IMAGE = "docker.io/library/lab-busybox:test"
WORK = "/run/lab-runtime-test"  # the test's config, image archive and containerd log, in the host
CTR = f"ctr --address {SOCKET} --namespace {NAMESPACE}"
CONFIG = f"""\
version = 2
root = "{K3S_CONTAINERD_ROOT}"
state = "/run/k3s/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{SOCKET}"
"""
# What containerd, its shims and this test make in the host (none of it there before, all of it gone after).
TRACES = ("/run/k3s", "/run/containerd", "/var/lib/rancher", WORK)
# The kernel settings kube-proxy (iptables mode) writes: they belong to the host's own network namespace.
KUBE_PROXY_SYSCTLS = (
    "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)


def _busybox_image(busybox: bytes) -> bytes:
    """An OCI image archive of one layer: Debian's static busybox as /bin/busybox, with a few applets linked."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        for directory in ("bin", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(busybox), 0o755
        tar.addfile(info, io.BytesIO(busybox))
        for applet in ("sh", "echo", "cat", "sleep"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    layer = layer_tar.getvalue()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(layer),
                    "size": len(layer)}],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
        "size": len(manifest), "annotations": {"io.containerd.image.name": IMAGE},
    }]}).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
        files.update({f"blobs/sha256/{_digest(blob)[7:]}": blob for blob in (layer, config, manifest)})
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive.getvalue()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture(scope="module")
def busybox(tmp_path_factory) -> bytes:
    """Debian's busybox-static, fetched with this machine's apt."""
    work = tmp_path_factory.mktemp("busybox")
    proc = subprocess.run(["apt-get", "download", "-q", "busybox-static"], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, f"apt-get download busybox-static (try apt-get update): {proc.stderr}"
    deb = next(work.glob("busybox-static_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True)
    return (work / "x" / "bin" / "busybox").read_bytes()


@pytest.fixture(scope="module")
def host(lab: Lab) -> LabHost:
    """A host where no k3s and no containerd run, and whose containerd directory is empty."""
    candidates = sorted(lab.hosts(), key=lambda h: (h.site != "home", h.name != "h3", h.name))
    check = f"pgrep -x containerd; ls -d {' '.join(TRACES)} 2>/dev/null; ls -A {CONTAINERD_DIR}"
    for candidate in candidates:
        if lab.ssh(candidate.name, check, check=False).stdout.strip() == "":
            return candidate
    pytest.fail(f"no lab host is free of k3s and containerd (checked {', '.join(h.name for h in candidates)})")


def _cgroup(lab: Lab, host: LabHost, controller: str) -> Path:
    """The host's own cgroup in the hierarchy of ``controller``, as this machine sees it."""
    return next(cg for cg in lab.cgroup_dirs(host.name) if controller in cg.parents[1].name.split(","))


@pytest.fixture(scope="module")
def containerd(lab: Lab, host: LabHost, busybox: bytes) -> Iterator[int]:
    """Debian's containerd started in ``host`` as the k3s stand-in starts it, with the busybox image imported;
    afterwards everything it and the tests made is gone."""
    name, pid = host.name, 0
    try:
        lab.ssh(name, f"mkdir -p {WORK} {Path(K3S_CONTAINERD_ROOT).parent} && "
                      f"ln -s {CONTAINERD_DIR} {K3S_CONTAINERD_ROOT} && cat > {WORK}/containerd.toml", input=CONFIG)
        subprocess.run(["ssh", "-F", str(lab.ssh_config), name, f"cat > {WORK}/busybox.tar"],
                       input=_busybox_image(busybox), check=True, timeout=60)
        pid = int(lab.ssh(name, f"containerd --config {WORK}/containerd.toml >{WORK}/containerd.log 2>&1 & echo $!")
                  .stdout)
        lab.ssh(name, f"for i in $(seq 100); do [ -S {SOCKET} ] && exit 0; sleep 0.1; done; "
                      f"cat {WORK}/containerd.log; exit 1")
        lab.ssh(name, f"{CTR} images import {WORK}/busybox.tar")
        yield pid
    finally:
        if pid:
            lab.ssh(name, f"for task in $({CTR} tasks ls -q); do {CTR} tasks kill -s KILL $task; "
                          f"{CTR} tasks rm -f $task; done; for c in $({CTR} containers ls -q); do "
                          f"{CTR} containers rm $c; done; {CTR} images rm {IMAGE}; "
                          f"kill {pid}; for i in $(seq 100); do kill -0 {pid} 2>/dev/null || break; sleep 0.1; done",
                    check=False)
        lab.ssh(name, f"rm -rf {CONTAINERD_DIR}/* {' '.join(TRACES)}; "
                      f"find /sys/fs/cgroup/*/{NAMESPACE} -depth -type d -exec rmdir {{}} +", check=False)
    left = lab.ssh(name, f"pgrep -a containerd; ls -d {' '.join(TRACES)} /sys/fs/cgroup/*/{NAMESPACE} 2>/dev/null; "
                         f"ls -A {CONTAINERD_DIR}", check=False).stdout
    assert left == "", f"left behind on {name}: {left}"
    assert not any((lab.host_dir(name) / "containerd").iterdir())


def test_a_container_runs_under_runc_on_overlay_snapshots_on_this_machine(lab, host, containerd):
    out = lab.ssh(host.name, f"{CTR} run --rm {IMAGE} hello /bin/sh -c 'echo hello from runc; cat /proc/self/cgroup'")
    assert out.stdout.startswith("hello from runc\n"), out.stdout + out.stderr
    # Its cgroups, as seen from the host (whose cgroup namespace starts at its own cgroup): ctr's /<namespace>/<id>.
    assert re.search(rf"^\d+:memory:/{NAMESPACE}/hello$", out.stdout, re.M), out.stdout
    # The image's layer is an overlayfs snapshot on the host's containerd directory, a directory of this machine.
    snapshots_listed = lab.ssh(host.name, f"{CTR} snapshots --snapshotter overlayfs ls").stdout.splitlines()
    assert len(snapshots_listed) > 1, snapshots_listed  # a header, then the layer's snapshot
    snapshots = lab.host_dir(host.name) / "containerd" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    assert any(snapshots.iterdir()), f"no snapshot in {snapshots}"
    assert lab.ssh(host.name, f"readlink {K3S_CONTAINERD_ROOT}").stdout.strip() == CONTAINERD_DIR


def test_its_processes_land_in_the_hosts_own_cgroups(lab, host, containerd):
    lab.ssh(host.name, f"{CTR} run -d {IMAGE} sleeper /bin/sleep 300")
    try:
        for controller in ("memory", "cpu", "pids", "cpuset"):
            procs = _cgroup(lab, host, controller) / NAMESPACE / "sleeper" / "cgroup.procs"
            pids = procs.read_text().split()
            assert len(pids) == 1, (procs, pids)
            assert Path(f"/proc/{pids[0]}/cmdline").read_bytes() == b"/bin/sleep\x00300\x00"
    finally:
        lab.ssh(host.name, f"{CTR} tasks kill -s KILL sleeper; for i in $(seq 50); do "
                           f"{CTR} tasks rm sleeper 2>/dev/null && break; sleep 0.1; done; "
                           f"{CTR} containers rm sleeper")
    assert lab.ssh(host.name, f"{CTR} tasks ls -q").stdout == ""


def test_kubelet_reads_its_kernel_settings_and_the_machine_keeps_its_own(lab, host):
    machine = {key: Path(f"/proc/sys/{key}").read_text() for key in KUBELET_SYSCTLS}
    for key, value in KUBELET_SYSCTLS.items():
        assert lab.ssh(host.name, f"cat /proc/sys/{key}").stdout == f"{value}\n", key
    # Set already, so kubelet writes none of them; and none can be written from a host.
    assert lab.ssh(host.name, "echo 1 > /proc/sys/vm/overcommit_memory", check=False).returncode != 0
    assert {key: Path(f"/proc/sys/{key}").read_text() for key in KUBELET_SYSCTLS} == machine


def test_kube_proxy_can_write_its_network_settings(lab, host):
    for key in KUBE_PROXY_SYSCTLS:
        assert lab.ssh(host.name, f"test -w /proc/sys/{key}", check=False).returncode == 0, key


def test_dev_kmsg_is_readable(lab, host):
    record = lab.ssh(host.name, "dd if=/dev/kmsg bs=8192 count=1 status=none").stdout
    assert re.match(r"\d+,\d+,\d+,", record), record
