"""The lab's container images: OCI layout tarballs that containerd and Docker import by name, reproducibly."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from portable_k3s.lab import images
from portable_k3s.lab.core import LabError
from portable_k3s.versions import IMAGES, VERSIONS


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_files(layer_tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
        return {m.name: m for m in tar.getmembers()}


def check_archive(path: Path) -> dict[str, dict[str, Any]]:
    """Assert that ``path`` is a consistent OCI layout + Docker manifest.json; return ``{name: details}``."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names, key=lambda n: n.split("/")), "entries are sorted, parents first"
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    files = images.read_archive(path)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    blobs = {"sha256:" + n.rsplit("/", 1)[1]: data for n, data in files.items() if n.startswith("blobs/sha256/")}
    for digest, data in blobs.items():
        assert sha256(data) == digest, f"blob {digest} holds other bytes"
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == images.MEDIA_INDEX
    docker = {tag: entry for entry in json.loads(files["manifest.json"]) for tag in entry["RepoTags"]}
    found: dict[str, dict[str, Any]] = {}
    for descriptor in index["manifests"]:
        manifest_bytes = blobs[descriptor["digest"]]
        assert descriptor["size"] == len(manifest_bytes)
        assert descriptor["mediaType"] == images.MEDIA_MANIFEST
        name = descriptor["annotations"][images.ANNOTATION_IMAGE_NAME]
        assert descriptor["annotations"][images.ANNOTATION_REF_NAME] == images.image_tag(name)
        manifest = json.loads(manifest_bytes)
        config_bytes = blobs[manifest["config"]["digest"]]
        assert manifest["config"]["size"] == len(config_bytes)
        assert manifest["config"]["mediaType"] == images.MEDIA_CONFIG
        config = json.loads(config_bytes)
        assert {k: config[k] for k in ("architecture", "os")} == {
            "architecture": images.image_platform()["architecture"], "os": "linux"
        }
        assert descriptor["platform"]["architecture"] == config["architecture"]
        layers = []
        for layer in manifest["layers"]:
            assert layer["mediaType"] == images.MEDIA_LAYER_GZIP
            assert layer["size"] == len(blobs[layer["digest"]])
            layers.append(gzip.decompress(blobs[layer["digest"]]))
        assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]}
        assert len(config["history"]) == len(layers)
        entry = docker[images.familiar_name(name)]
        assert entry["Config"] == "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]
        assert entry["Layers"] == ["blobs/sha256/" + la["digest"].split(":")[1] for la in manifest["layers"]]
        found[name] = {"config": config, "layers": layers}
    assert len(docker) == len(found), "manifest.json names the same images as index.json"
    return found


def sample_layer(text: bytes) -> bytes:
    return images.tar_bytes([images.Entry("bin/"), images.Entry("bin/hello", text, 0o755)])


def test_names() -> None:
    assert images.familiar_name("docker.io/library/busybox:x") == "busybox:x"
    assert images.familiar_name("docker.io/rancher/mirrored-pause:3.6") == "rancher/mirrored-pause:3.6"
    assert images.familiar_name("quay.io/ceph/ceph:v19") == "quay.io/ceph/ceph:v19"
    assert images.image_tag("registry.invalid:5000/a/b") == "latest"
    assert images.image_tag(images.PAUSE_IMAGE) == "3.6"
    assert images.PAUSE_IMAGE == "docker.io/rancher/mirrored-pause:3.6"  # k3s's sandbox image for containerd
    assert images.airgap_file_name("amd64") == "k3s-airgap-images-amd64.tar.zst"
    assert images.kubernetes_module_version(VERSIONS["k3s"]) == VERSIONS["k3s"].replace("+", "-")


def test_tar_is_sorted_with_fixed_metadata() -> None:
    data = images.tar_bytes([
        images.Entry("b/z", b"z"), images.Entry("b/"), images.Entry("a", b"a", 0o755),
        images.Entry("b/link", link="z"), images.Entry("tmp/", mode=0o1777),
    ])
    members = list(layer_files(data).values())
    assert [m.name for m in members] == ["a", "b", "b/link", "b/z", "tmp"]
    assert [m.mode for m in members] == [0o755, 0o644, 0o777, 0o644, 0o1777]
    assert members[2].issym() and members[2].linkname == "z"
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)


def test_oci_archive_names_the_image_and_matches_its_blobs(tmp_path: Path) -> None:
    layer = sample_layer(b"hello")
    out = images.oci_archive("docker.io/library/hello:lab", [layer], {"Cmd": ["/bin/hello"]}, tmp_path / "a.tar")
    found = check_archive(out)
    assert list(found) == ["docker.io/library/hello:lab"]
    assert found["docker.io/library/hello:lab"]["layers"] == [layer]
    assert found["docker.io/library/hello:lab"]["config"]["config"] == {"Cmd": ["/bin/hello"]}
    assert json.loads(images.read_archive(out)["manifest.json"])[0]["RepoTags"] == ["hello:lab"]
    assert images.image_names(out) == ["docker.io/library/hello:lab"]


def test_oci_archive_is_reproducible(tmp_path: Path) -> None:
    def build(out: Path) -> bytes:
        return images.oci_archive("docker.io/x/y:1", [sample_layer(b"1"), sample_layer(b"2")], {}, out).read_bytes()

    assert build(tmp_path / "one.tar") == build(tmp_path / "two.tar")
    assert build(tmp_path / "one.tar") != images.oci_archive("docker.io/x/y:2", [sample_layer(b"1")], {},
                                                             tmp_path / "three.tar").read_bytes()


needs_zstd = pytest.mark.skipif(
    shutil.which("zstd") is None, reason="the zstd command is missing (apt-get install zstd)"
)


@needs_zstd
def test_airgap_bundle_holds_every_image_once(tmp_path: Path) -> None:
    shared = sample_layer(b"shared")
    a = images.oci_archive("docker.io/library/a:1", [shared], {}, tmp_path / "a.tar")
    b = images.oci_archive("docker.io/library/b:1", [shared, sample_layer(b"b")], {}, tmp_path / "b.tar")
    bundle = images.airgap_bundle([a, b], tmp_path / "one" / "k3s-airgap-images-amd64.tar.zst")
    assert bundle.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # the zstd frame magic
    again = images.airgap_bundle([a, b], tmp_path / "two" / "k3s-airgap-images-amd64.tar.zst")
    assert bundle.read_bytes() == again.read_bytes()
    tar = images.read_bundle(bundle)
    try:
        found = check_archive(tar)
        blobs = [n for n in images.read_archive(tar) if n.startswith("blobs/sha256/")]
    finally:
        tar.unlink()
    assert sorted(found) == ["docker.io/library/a:1", "docker.io/library/b:1"]
    assert len(blobs) == 2 * 2 + 2  # two manifests, two configs, two distinct layers (the shared one once)


def test_airgap_bundle_rejects_other_tarballs(tmp_path: Path) -> None:
    other = tmp_path / "other.tar"
    other.write_bytes(images.tar_bytes([images.Entry("x", b"x")]))
    with pytest.raises(LabError, match="not an OCI image layout"):
        images.merged_archive([other], tmp_path / "out.tar")


def test_busybox_layer_links_every_applet_to_busybox() -> None:
    files = layer_files(images.busybox_layer(b"\x7fELF fake", ["ls", "sh"], b"copyright"))
    assert files["bin/busybox"].mode == 0o755
    assert files["bin/sh"].issym() and files["bin/sh"].linkname == "busybox"
    assert files["bin/ls"].linkname == "busybox"
    assert files["tmp"].mode == 0o1777 and files["root"].mode == 0o700
    assert {"dev", "proc", "sys", "etc/passwd", "etc/group", "usr/share/doc/busybox-static/copyright"} <= set(files)


def test_pause_version_follows_the_makefile() -> None:
    makefile = "REGISTRY ?= staging\nTAG ?= 3.10.1\nREV = $(shell git describe --contains --always --match='v*')\n"
    assert images.pause_version(makefile, "v1.35.3-k3s1") == "v3.10.1-v1.35.3-k3s1"
    with pytest.raises(LabError):
        images.pause_version("all:\n", "v1")


@pytest.fixture(scope="module")
def kubernetes_dir() -> Path:
    if shutil.which("gcc") is None or shutil.which("strip") is None:
        pytest.skip("gcc/strip missing: the pause image is compiled here (apt-get install gcc libc6-dev)")
    try:
        return images.kubernetes_source(VERSIONS["k3s"], offline=True)
    except LabError as exc:
        pytest.skip(f"the Kubernetes module of k3s {VERSIONS['k3s']} is not in the Go module cache "
                    f"(go mod download {images.KUBERNETES_MODULE}@{images.kubernetes_module_version(VERSIONS['k3s'])}):"
                    f" {str(exc).splitlines()[0]}")


def test_pause_image_is_kubernetes_pause_c(tmp_path: Path, kubernetes_dir: Path) -> None:
    out = images.build_pause(tmp_path / "cache", source_dir=kubernetes_dir)
    assert out.parent == tmp_path / "cache" / "images"
    found = check_archive(out)
    assert list(found) == [images.PAUSE_IMAGE]
    config = found[images.PAUSE_IMAGE]["config"]
    assert config["config"]["Entrypoint"] == ["/pause"] and config["config"]["User"] == "65535:65535"
    (layer,) = found[images.PAUSE_IMAGE]["layers"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert tar.getnames() == ["pause"]
        member = tar.getmember("pause")
        binary = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert member.mode == 0o755 and binary[:4] == b"\x7fELF"
    assert 300_000 < len(binary) < 2_000_000, "a stripped static binary"
    (tmp_path / "pause").write_bytes(binary)
    (tmp_path / "pause").chmod(0o755)
    version = subprocess.run([tmp_path / "pause", "-v"], capture_output=True, text=True, timeout=10).stdout
    assert version.strip() == f"pause.c v3.10.1-{images.kubernetes_module_version(VERSIONS['k3s'])}"
    # cached: the same file, untouched; and another cache gets the same bytes
    mtime = out.stat().st_mtime_ns
    assert images.build_pause(tmp_path / "cache", source_dir=kubernetes_dir) == out
    assert out.stat().st_mtime_ns == mtime
    assert images.build_pause(tmp_path / "other", source_dir=kubernetes_dir).read_bytes() == out.read_bytes()


@pytest.fixture(scope="module")
def busybox_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb missing: the busybox image comes from Debian's busybox-static")
    try:
        package = images.apt_candidate(images.BUSYBOX_PACKAGE)
        return images.download_deb(package, tmp_path_factory.mktemp("deb"))
    except LabError as exc:
        pytest.skip(f"cannot download {images.BUSYBOX_PACKAGE} with apt here: {str(exc).splitlines()[0]}")


def test_busybox_image_from_debian(tmp_path: Path, busybox_deb: Path) -> None:
    out = images.build_busybox(tmp_path / "cache", deb=busybox_deb)
    found = check_archive(out)
    assert list(found) == [images.BUSYBOX_IMAGE]
    assert found[images.BUSYBOX_IMAGE]["config"]["config"]["Cmd"] == ["sh"]
    files = layer_files(found[images.BUSYBOX_IMAGE]["layers"][0])
    assert files["bin/sh"].linkname == "busybox" and files["bin/busybox"].isfile()
    assert len([f for f in files.values() if f.issym()]) > 100
    assert images.build_busybox(tmp_path / "other", deb=busybox_deb).read_bytes() == out.read_bytes()


COREDNS_MANIFEST = Path(images.__file__).parent / "k3s_standin" / "manifests" / "coredns.yaml"


def test_coredns_image_is_named_as_k3s_deploys_it() -> None:
    assert images.COREDNS_IMAGE == "docker.io/rancher/mirrored-coredns-coredns:1.14.2"  # k3s v1.35.3+k3s1's
    assert images.image_tag(images.COREDNS_IMAGE) == images.COREDNS_VERSION == "1.14.2"


def test_coredns_layer_holds_the_binary_and_its_users() -> None:
    layer = images.coredns_layer(b"\x7fELF fake")
    assert layer == images.coredns_layer(b"\x7fELF fake")
    files = layer_files(layer)
    assert files["coredns"].mode == 0o755 and files["coredns"].isfile()
    assert files["tmp"].mode == 0o1777
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
    uid, gid = images.COREDNS_USER.split(":")
    assert f"nonroot:x:{uid}:{gid}:" in passwd and "nobody:x:65534:" in passwd


def load_coredns_manifest() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(COREDNS_MANIFEST.read_text()) if doc is not None]


def test_coredns_manifest_is_k3s_coredns_rendered_for_the_lab() -> None:
    assert not re.search(r"%\{[A-Z_]+\}%", COREDNS_MANIFEST.read_text()), "every k3s placeholder is filled in"
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for doc in load_coredns_manifest()}
    assert set(docs) == {
        ("ServiceAccount", "coredns"), ("ClusterRole", "system:coredns"), ("ClusterRoleBinding", "system:coredns"),
        ("ConfigMap", "coredns"), ("Deployment", "coredns"), ("Service", "kube-dns"),
    }
    config = docs[("ConfigMap", "coredns")]["data"]
    assert set(config) == {"Corefile", "NodeHosts"}
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in config["Corefile"]
    assert "forward . /etc/resolv.conf" in config["Corefile"]
    deployment = docs[("Deployment", "coredns")]
    assert deployment["metadata"]["namespace"] == "kube-system"
    assert deployment["spec"]["selector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == images.familiar_name(images.COREDNS_IMAGE)  # containerd's normalized name
    assert container["imagePullPolicy"] == "IfNotPresent"
    service = docs[("Service", "kube-dns")]["spec"]
    assert service["clusterIP"] == "10.43.0.10" and service["clusterIPs"] == ["10.43.0.10"]
    assert [(p["name"], p["port"], p["protocol"]) for p in service["ports"]] == [
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")
    ]
    assert service["selector"] == {"k8s-app": "kube-dns"}


def test_coredns_manifest_passes_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    kubernetes = ".".join(VERSIONS["k3s"].lstrip("v").split(".")[:2]) + ".0"  # the Kubernetes k3s embeds
    for document in load_coredns_manifest():
        kubernetes_validate.validate(document, kubernetes, strict=True)


@pytest.fixture(scope="module")
def coredns_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CoreDNS from the lab's cache, else built here from the Go module cache (no network)."""
    from portable_k3s.lab.core import LabConfig

    cached = images.coredns_binary_path(LabConfig.from_env().cache_dir)
    if cached.exists():
        return cached
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        pytest.skip("the Go toolchain is missing: the CoreDNS image is built from its Go module")
    try:
        return images.build_coredns_binary(tmp_path_factory.mktemp("cache"), offline=True)
    except LabError as exc:
        reason = str(exc).strip().splitlines()[-1]
        pytest.skip(f"CoreDNS is neither built in the lab's cache nor buildable from the Go module cache "
                    f"(go mod download {images.COREDNS_MODULE}@v{images.COREDNS_VERSION}): {reason}")


def test_coredns_binary_is_the_pinned_version(coredns_binary: Path) -> None:
    version = subprocess.run([coredns_binary, "-version"], capture_output=True, text=True, timeout=30).stdout
    assert version.splitlines()[0] == f"CoreDNS-{images.COREDNS_VERSION}"


@pytest.fixture(scope="module")
def traefik_binary() -> Path:
    """Traefik from the lab's cache, built there once if missing (the lab tier uses the same binary)."""
    from portable_k3s.lab.core import LabConfig

    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        pytest.skip("the Go toolchain is missing: the Traefik image is built from its Go module")
    return images.build_traefik_binary(LabConfig.from_env().cache_dir)


@pytest.fixture(scope="module")
def restic_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """restic from the lab's cache, else built here from the Go module cache (no network)."""
    from portable_k3s.lab.core import LabConfig

    cached = images.restic_binary_path(LabConfig.from_env().cache_dir)
    if cached.exists():
        return cached
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        pytest.skip("the Go toolchain is missing: the restic image is built from its Go module")
    try:
        return images.build_restic_binary(tmp_path_factory.mktemp("cache"), offline=True)
    except LabError as exc:
        reason = str(exc).strip().splitlines()[-1]
        pytest.skip(f"restic is neither built in the lab's cache nor buildable from the Go module cache "
                    f"(go mod download {images.RESTIC_MODULE}@v{images.RESTIC_VERSION}): {reason}")


@pytest.fixture(scope="module")
def lab_cache(
    tmp_path_factory: pytest.TempPathFactory, kubernetes_dir: Path, busybox_deb: Path, coredns_binary: Path,
    traefik_binary: Path, restic_binary: Path,
) -> Path:
    """A lab cache holding every image, each built once for this module."""
    cache = tmp_path_factory.mktemp("lab-cache")
    for built, binary in ((images.coredns_binary_path(cache), coredns_binary),
                          (cache / "go-bin" / traefik_binary.parent.name / "traefik", traefik_binary),
                          (images.restic_binary_path(cache), restic_binary)):
        if not built.exists():
            built.parent.mkdir(parents=True)
            built.symlink_to(binary)
    images.build_pause(cache, source_dir=kubernetes_dir)
    images.build_busybox(cache, deb=busybox_deb)
    return cache


def test_coredns_image_runs_coredns_as_nonroot(lab_cache: Path, coredns_binary: Path) -> None:
    out = images.build_coredns(lab_cache)
    found = check_archive(out)
    assert list(found) == [images.COREDNS_IMAGE]
    config = found[images.COREDNS_IMAGE]["config"]["config"]
    assert config["Entrypoint"] == ["/coredns"] and config["User"] == images.COREDNS_USER
    assert config["Labels"]["org.opencontainers.image.version"] == images.COREDNS_VERSION
    (layer,) = found[images.COREDNS_IMAGE]["layers"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        member = tar.getmember("coredns")
        binary = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert member.mode == 0o755 and binary == coredns_binary.read_bytes()
    assert images.build_coredns(lab_cache) == out, "cached"


@needs_zstd
def test_airgap_bundle_carries_every_lab_image(lab_cache: Path) -> None:
    bundle = images.build_airgap_images(lab_cache)
    assert bundle.name == images.airgap_file_name()
    tar = images.read_bundle(bundle)
    try:
        found = check_archive(tar)
    finally:
        tar.unlink()
    assert sorted(found) == sorted([
        images.PAUSE_IMAGE, images.BUSYBOX_IMAGE, images.COREDNS_IMAGE, images.TRAEFIK_IMAGE, images.STATIC_IMAGE,
        images.RESTIC_IMAGE, images.SQLITE_IMAGE,
    ])


def test_traefik_image_runs_the_pinned_traefik_as_nonroot(lab_cache: Path, traefik_binary: Path) -> None:
    version = subprocess.run([traefik_binary, "version"], capture_output=True, text=True, timeout=30).stdout
    assert f"Version:      {images.TRAEFIK_VERSION}" in version, version
    out = images.build_traefik(lab_cache)
    found = check_archive(out)
    assert list(found) == [images.TRAEFIK_IMAGE]
    config = found[images.TRAEFIK_IMAGE]["config"]["config"]
    assert config["Entrypoint"] == ["/usr/local/bin/traefik"] and config["User"] == images.TRAEFIK_USER
    (layer,) = found[images.TRAEFIK_IMAGE]["layers"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert tar.extractfile("usr/local/bin/traefik").read() == traefik_binary.read_bytes()  # type: ignore[union-attr]
    assert images.build_traefik(lab_cache) == out, "cached"


def test_traefik_crds_are_the_modules_definitions() -> None:
    try:
        crds = images.traefik_crds(offline=True).decode()
    except LabError as exc:
        pytest.skip(f"the Traefik module is not in the Go module cache: {exc}")
    kinds = {line.split(":")[1].strip() for line in crds.splitlines() if line.startswith("    kind:")}
    assert {"IngressRoute", "IngressRouteTCP", "Middleware", "TLSOption"} <= kinds


@pytest.mark.skipif(os.geteuid() != 0, reason="running nginx in its root filesystem needs root (unshare --root)")
def test_nginx_image_is_debians_nginx_with_every_library_it_loads(lab_cache: Path, tmp_path: Path) -> None:
    out = images.build_nginx(lab_cache)
    found = check_archive(out)
    assert list(found) == [images.STATIC_IMAGE]
    config = found[images.STATIC_IMAGE]["config"]["config"]
    assert config["Entrypoint"] == ["/usr/sbin/nginx"] and config["Cmd"] == ["-g", "daemon off;"]
    assert "Debian's nginx" in config["Labels"]["org.opencontainers.image.description"]
    (layer,) = found[images.STATIC_IMAGE]["layers"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        tar.extractall(tmp_path, filter="tar")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "stderr").touch()
    checked = subprocess.run(["unshare", "-m", "--root", str(tmp_path), "/usr/sbin/nginx", "-t"],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and "syntax is ok" in checked.stderr, checked.stderr
    assert images.build_nginx(lab_cache) == out, "cached"


def test_backup_images_are_named_as_the_pins() -> None:
    assert images.RESTIC_IMAGE == f"docker.io/{IMAGES['restic']}" == "docker.io/restic/restic:0.18.1"
    assert images.familiar_name(images.RESTIC_IMAGE) == IMAGES["restic"]
    assert images.image_tag(images.RESTIC_IMAGE) == images.RESTIC_VERSION == "0.18.1"
    assert images.SQLITE_IMAGE == f"docker.io/{IMAGES['sqlite']}" == "docker.io/keinos/sqlite3:3.47.2"
    assert images.familiar_name(images.SQLITE_IMAGE) == IMAGES["sqlite"]
    assert {"sh", "find", "head", "grep", "sed", "cp", "mkdir", "dirname", "[", "xargs"} <= set(images.BACKUP_APPLETS)


def test_busybox_entries_link_the_applets_and_refuse_missing_ones(tmp_path: Path, busybox_deb: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(busybox_deb), str(tmp_path)], check=True)
    entries = {e.path: e for e in images.busybox_entries(tmp_path, images.BACKUP_APPLETS)}
    assert entries["bin/busybox"].mode == 0o755 and entries["bin/busybox"].data[:4] == b"\x7fELF"
    assert all(entries[f"bin/{applet}"].link == "busybox" for applet in images.BACKUP_APPLETS)
    with pytest.raises(LabError, match="no applet no-such-applet"):
        images.busybox_entries(tmp_path, ["sh", "no-such-applet"])


def check_backup_layer(files: dict[str, tarfile.TarInfo]) -> None:
    """The parts the backup images share: busybox's applets in /bin, root, /tmp and root's home."""
    assert files["bin/busybox"].isfile() and files["bin/busybox"].mode == 0o755
    for applet in images.BACKUP_APPLETS:
        assert files[f"bin/{applet}"].issym() and files[f"bin/{applet}"].linkname == "busybox", applet
    assert files["tmp"].mode == 0o1777 and files["root"].isdir()
    assert {"etc/passwd", "etc/group"} <= set(files)


def test_restic_binary_is_the_pinned_version(restic_binary: Path) -> None:
    version = subprocess.run([restic_binary, "version"], capture_output=True, text=True, timeout=30).stdout
    assert version.startswith(f"restic {images.RESTIC_VERSION} compiled with go"), version


def test_restic_image_runs_restic_with_a_busybox_shell(lab_cache: Path, restic_binary: Path) -> None:
    out = images.build_restic(lab_cache)
    found = check_archive(out)
    assert list(found) == [images.RESTIC_IMAGE]
    config = found[images.RESTIC_IMAGE]["config"]["config"]
    assert config["Entrypoint"] == ["/usr/bin/restic"] and "User" not in config  # as upstream's: root
    assert config["Labels"]["org.opencontainers.image.version"] == images.RESTIC_VERSION
    (layer,) = found[images.RESTIC_IMAGE]["layers"]
    files = layer_files(layer)
    assert files["usr/bin/restic"].mode == 0o755
    check_backup_layer(files)
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert tar.extractfile("usr/bin/restic").read() == restic_binary.read_bytes()  # type: ignore[union-attr]
    assert images.build_restic(lab_cache) == out, "cached"


def test_sqlite_image_is_debians_sqlite3_and_backs_up_a_database(lab_cache: Path, tmp_path: Path) -> None:
    out = images.build_sqlite(lab_cache)
    found = check_archive(out)
    assert list(found) == [images.SQLITE_IMAGE]
    config = found[images.SQLITE_IMAGE]["config"]["config"]
    assert config["Cmd"] == ["sqlite3"] and "Entrypoint" not in config and "User" not in config
    assert "Debian's sqlite3" in config["Labels"]["org.opencontainers.image.description"]
    (layer,) = found[images.SQLITE_IMAGE]["layers"]
    files = layer_files(layer)
    assert files["usr/bin/sqlite3"].mode == 0o755
    assert any(re.search(r"/libsqlite3\.so\.", name) for name in files)
    check_backup_layer(files)
    root = tmp_path / "root"
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        tar.extractall(root, filter="tar")
    # sqlite3 with only the image's libraries, through the image's own loader
    loader = next(p for p in root.rglob("ld-linux-*") if p.is_file() and not p.is_symlink())
    library_path = ":".join(str(d) for d in sorted({p.parent for p in root.rglob("*.so*")}))

    def sqlite3(*args: str) -> str:
        proc = subprocess.run([str(loader), "--library-path", library_path, str(root / "usr/bin/sqlite3"), *args],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    sqlite3(str(tmp_path / "app.db"), "create table t(x); insert into t values (1), (2), (3);")
    sqlite3(str(tmp_path / "app.db"), f".backup '{tmp_path / 'copy.db'}'")
    assert sqlite3(str(tmp_path / "copy.db"), "pragma integrity_check; select sum(x) from t;").split() == ["ok", "6"]
    assert images.build_sqlite(lab_cache) == out, "cached"
