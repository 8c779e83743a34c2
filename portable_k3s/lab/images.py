"""Container images for the lab's Kubernetes nodes, built on this machine and packed like k3s's airgap images.

Images cannot be pulled in the lab. A real airgapped k3s imports every tarball in
``/var/lib/rancher/k3s/agent/images/`` into containerd when it starts; upstream publishes them as
``k3s-airgap-images-<arch>.tar.zst``. The lab builds its own, from sources it can reach:

* the pause (sandbox) image from Kubernetes' own ``build/pause/linux/pause.c`` in the Go module of the Kubernetes
  that the pinned k3s embeds, compiled as its Makefile does (``gcc -Os -Wall -Werror -static -DVERSION=…``,
  stripped), named as the image k3s configures for containerd's sandbox;
* a small busybox image for tests, from Debian's ``busybox-static`` package (apt, as everything else here);
* CoreDNS, built from its Go module (``github.com/coredns/coredns``, the default plugin set, static), named as
  the CoreDNS image that the pinned k3s's ``coredns.yaml`` deploys;
* Traefik, built from its Go module (``github.com/traefik/traefik/v3``), named as k3s's mirrored Traefik image;
* nginx for the catalog's ``static`` kind, from Debian's ``nginx`` package (the binary and the libraries it loads,
  with the official image's configuration and Debian's busybox-static for a shell), under the catalog's image name;
* restic for the apps' backups, built from its Go module as its release is, with busybox for the backup scripts,
  under upstream's image name (``versions.IMAGES["restic"]``);
* sqlite3 for consistent copies of the apps' SQLite databases, from Debian's ``sqlite3`` package as nginx (the
  binary, the libraries it loads, busybox), under the pinned image's name (``versions.IMAGES["sqlite"]``).

Each image is an OCI image layout tarball (``oci-layout``, ``index.json``, ``blobs/sha256/…``) that also carries
Docker's ``manifest.json``, as ``docker save`` writes it, so containerd's and Docker's importers both name it.
Archives are reproducible: the same inputs give the same bytes. Everything is built once and cached by its
inputs under ``<cache_dir>/images/``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..versions import IMAGES, VERSIONS
from .common import LabError, go_arch, log
from .gobuild import GoTool, build_go_tool, build_in_module, module_source

# containerd's name for an image without a registry part (Docker's default domain); a name, never contacted.
DEFAULT_DOMAIN = "docker.io"

# The sandbox image k3s writes into containerd's config (k3s's ``--pause-image`` default, also in its airgap image
# list). The lab's image under this name is pause.c from the Kubernetes that the pinned k3s embeds.
PAUSE_IMAGE = f"{DEFAULT_DOMAIN}/rancher/mirrored-pause:3.6"
# A lab-only tag: no upstream busybox image has it.
BUSYBOX_IMAGE = f"{DEFAULT_DOMAIN}/library/busybox:portable-k3s-lab"

KUBERNETES_MODULE = "github.com/k3s-io/kubernetes"
PAUSE_SOURCE = "build/pause/linux/pause.c"
PAUSE_MAKEFILE = "build/pause/Makefile"
BUSYBOX_PACKAGE = "busybox-static"

# The CoreDNS image that k3s v1.35.3+k3s1 deploys (its manifests/coredns.yaml, with an empty system-default-registry;
# its release notes list CoreDNS v1.14.2). The lab's image under this name holds CoreDNS COREDNS_VERSION built here.
COREDNS_IMAGE = f"{DEFAULT_DOMAIN}/rancher/mirrored-coredns-coredns:1.14.2"
COREDNS_MODULE = "github.com/coredns/coredns"
COREDNS_VERSION = "1.14.2"
# Upstream's image runs as distroless's "nonroot" user; binding :53 then relies on the runtime's unprivileged-port
# sysctl in the pod (k3s's containerd config sets enable_unprivileged_ports = true).
COREDNS_USER = "65532:65532"

# Traefik as k3s runs it (its bundled traefik.yaml names this image; the stand-in's copy pins this tag).
# k3s v1.35.3+k3s1 bundles an earlier 3.6 patch; 3.6.13 is the release served here (k3s moved to it in v1.35.4).
TRAEFIK_MODULE = "github.com/traefik/traefik/v3"
TRAEFIK_VERSION = "3.6.13"
TRAEFIK_IMAGE = f"{DEFAULT_DOMAIN}/rancher/mirrored-library-traefik:{TRAEFIK_VERSION}"
TRAEFIK_USER = "65532:65532"
# Traefik's CRD definitions in its module: what k3s's traefik-crd chart installs.
TRAEFIK_CRDS = "docs/content/reference/dynamic-configuration/kubernetes-crd-definition-v1.yml"

# The catalog's static kind runs this image (versions.IMAGES["static"]). The lab's image under this name is Debian's
# nginx, not upstream's alpine build: no registry is reachable from here.
STATIC_IMAGE = f"{DEFAULT_DOMAIN}/library/{IMAGES['static']}"
NGINX_PACKAGES = ("nginx", "nginx-common", "libc6", "libcrypt1", "libpcre2-8-0", "libssl3", "zlib1g")
NGINX_APPLETS = ("sh", "cat", "ls", "mkdir", "rm", "tar", "echo")
# The official nginx image's nginx.conf and conf.d/default.conf in one file (access log to stdout with
# X-Forwarded-For, the document root /usr/share/nginx/html that the static kind mounts its volume at).
NGINX_CONF = b"""user nginx;
worker_processes auto;
error_log /dev/stderr notice;
pid /run/nginx.pid;
events {
    worker_connections 1024;
}
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" '
                    '"$http_user_agent" "$http_x_forwarded_for"';
    access_log /dev/stdout main;
    sendfile on;
    keepalive_timeout 65;
    server {
        listen 80;
        listen [::]:80;
        server_name localhost;
        location / {
            root /usr/share/nginx/html;
            index index.html index.htm;
        }
        error_page 500 502 503 504 /50x.html;
        location = /50x.html {
            root /usr/share/nginx/html;
        }
    }
}
"""

# The busybox applets of the backup images (restic's and sqlite3's): what their backup and restore scripts run.
BACKUP_APPLETS = (
    "sh", "cat", "ls", "mkdir", "rm", "cp", "mv", "find", "head", "grep", "sed", "date", "sleep", "test", "[",
    "echo", "wc", "stat", "xargs", "tr", "cut", "sort", "touch", "env", "true", "false", "du", "chmod", "chown",
    "dirname", "basename",
)

# restic as upstream's image has it (versions.IMAGES["restic"]), built here from its Go module as its release is
# (helpers/build-release-binaries: ./cmd/restic, CGO off, -trimpath, -ldflags "-s -w", these tags). The source
# sets the version itself (cmd/restic/global.go), so no -X flag.
RESTIC_MODULE = "github.com/restic/restic"
RESTIC_VERSION = IMAGES["restic"].rsplit(":", 1)[1]
RESTIC_IMAGE = f"{DEFAULT_DOMAIN}/{IMAGES['restic']}"
RESTIC_BUILD_TAGS = ("selfupdate", "disable_grpc_modules")

# The backups' sqlite3 image (versions.IMAGES["sqlite"]). The lab's image under this name is Debian's sqlite3, not
# upstream's alpine build (which runs ``sqlite3`` as its command).
SQLITE_IMAGE = f"{DEFAULT_DOMAIN}/{IMAGES['sqlite']}"
SQLITE_PACKAGES = ("sqlite3", "libsqlite3-0", "libreadline8", "libtinfo6", "zlib1g", "libc6")

# Bump when what goes into an image changes for the same inputs (the cache keys include it).
RECIPE_VERSION = "1"

AIRGAP_DIR = "/var/lib/rancher/k3s/agent/images"  # where k3s imports the tarballs from, at every start

EPOCH = "1970-01-01T00:00:00Z"  # the fixed creation time of every image (reproducible bytes)
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Entry:
    """One file in a tar archive: a directory if ``path`` ends with ``/``, a symlink if ``link`` is set."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    link: str = ""


# -- names ----------------------------------------------------------------------------------------------------


def image_platform() -> dict[str, str]:
    """This machine's platform in OCI terms (``architecture``, ``os``, and ``variant`` for 32-bit arm)."""
    platform = {"architecture": go_arch(), "os": "linux"}
    if platform["architecture"] == "arm":
        platform["variant"] = "v7"
    return platform


def familiar_name(name: str) -> str:
    """``docker.io/library/busybox:x`` -> ``busybox:x``: the short form Docker writes in ``RepoTags``."""
    if name.startswith(DEFAULT_DOMAIN + "/"):
        name = name[len(DEFAULT_DOMAIN) + 1:]
        if name.startswith("library/") and name.count("/") == 1:
            name = name[len("library/"):]
    return name


def image_tag(name: str) -> str:
    """The tag of ``name`` (``latest`` when it has none)."""
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


# -- archives -------------------------------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def tar_bytes(entries: Sequence[Entry]) -> bytes:
    """A reproducible tar: entries sorted by path, parents first, mtime 0, owned by 0:0."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path.rstrip("/").split("/")):
            info = tarfile.TarInfo(entry.path.rstrip("/"))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = entry.mode
            if entry.path.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.link:
                info.type = tarfile.SYMTYPE
                info.linkname = entry.link
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def _with_parents(entries: Sequence[Entry]) -> list[Entry]:
    """``entries`` plus a directory entry for every parent they lack (mode 0755)."""
    paths = {e.path.rstrip("/") for e in entries}
    parents = {}
    for entry in entries:
        parts = entry.path.rstrip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in paths:
                parents[parent] = Entry(parent + "/", mode=0o755)
    return [*entries, *parents.values()]


def _layout_tar(
    blobs: Mapping[str, bytes], manifests: Sequence[Mapping[str, Any]], docker_manifest: Sequence[Mapping[str, Any]]
) -> bytes:
    """An OCI image layout (+ Docker's manifest.json) as tar bytes."""
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": list(manifests)}
    entries = [Entry(f"blobs/sha256/{digest.split(':', 1)[1]}", data) for digest, data in blobs.items()]
    entries += [
        Entry("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
        Entry("index.json", _json(index)),
        Entry("manifest.json", _json(list(docker_manifest))),
    ]
    return tar_bytes(_with_parents(entries))


def _write_atomically(out: Path, data: bytes) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, out)
    return out


def oci_archive(
    name: str, layers: Sequence[bytes], config: Mapping[str, Any], out: Path, created_by: str = "portable-k3s lab"
) -> Path:
    """Write image ``name`` as an OCI layout tarball at ``out``; return ``out``.

    + name: the full image name (``docker.io/rancher/mirrored-pause:3.6``)
    + layers: uncompressed layer tarballs, base first (stored gzipped; their digests become ``rootfs.diff_ids``)
    + config: the runtime part of the image config (``Entrypoint``, ``Cmd``, ``Env``, ``User``, ``Labels``…)
    + created_by: the history note of every layer

    ``ctr images import`` / containerd's import API name it from ``io.containerd.image.name`` in index.json,
    ``docker load`` from ``RepoTags`` in manifest.json.
    """
    blobs: dict[str, bytes] = {}
    layer_descriptors: list[dict[str, Any]] = []
    for layer in layers:
        compressed = gzip.compress(layer, compresslevel=9, mtime=0)
        blobs[_digest(compressed)] = compressed
        layer_descriptors.append(
            {"mediaType": MEDIA_LAYER_GZIP, "digest": _digest(compressed), "size": len(compressed)}
        )
    platform = image_platform()
    image_config = {
        **platform,
        "created": EPOCH,
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer) for layer in layers]},
        "history": [{"created": EPOCH, "created_by": created_by} for _ in layers],
    }
    config_bytes = _json(image_config)
    blobs[_digest(config_bytes)] = config_bytes
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config_bytes), "size": len(config_bytes)},
        "layers": layer_descriptors,
    }
    manifest_bytes = _json(manifest)
    blobs[_digest(manifest_bytes)] = manifest_bytes
    index_entry = {
        "mediaType": MEDIA_MANIFEST,
        "digest": _digest(manifest_bytes),
        "size": len(manifest_bytes),
        "platform": platform,
        "annotations": {ANNOTATION_IMAGE_NAME: name, ANNOTATION_REF_NAME: image_tag(name)},
    }
    docker_entry = {
        "Config": f"blobs/sha256/{_digest(config_bytes).split(':', 1)[1]}",
        "RepoTags": [familiar_name(name)],
        "Layers": [f"blobs/sha256/{str(d['digest']).split(':', 1)[1]}" for d in layer_descriptors],
    }
    return _write_atomically(out, _layout_tar(blobs, [index_entry], [docker_entry]))


def read_archive(path: Path) -> dict[str, bytes]:
    """The regular files of an (uncompressed) image tarball: ``{member name: bytes}``."""
    files: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:") as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                if extracted is not None:
                    files[member.name] = extracted.read()
    return files


def image_names(path: Path) -> list[str]:
    """The image names in an image tarball's index.json (``io.containerd.image.name``)."""
    index = json.loads(read_archive(path)["index.json"])
    return [m.get("annotations", {}).get(ANNOTATION_IMAGE_NAME, "") for m in index["manifests"]]


def merged_archive(images: Sequence[Path], out: Path) -> Path:
    """Merge image tarballs into one (shared blobs once), as ``docker save`` of several images writes it."""
    blobs: dict[str, bytes] = {}
    manifests: list[dict[str, Any]] = []
    docker_manifest: list[dict[str, Any]] = []
    for image in images:
        files = read_archive(image)
        if "oci-layout" not in files or "index.json" not in files:
            raise LabError(f"{image} is not an OCI image layout tarball (no oci-layout or index.json)")
        for member, data in files.items():
            if member.startswith("blobs/sha256/"):
                blobs["sha256:" + member.rsplit("/", 1)[1]] = data
        for manifest in json.loads(files["index.json"])["manifests"]:
            if manifest not in manifests:
                manifests.append(manifest)
        for entry in json.loads(files.get("manifest.json", b"[]")):
            if entry not in docker_manifest:
                docker_manifest.append(entry)
    return _write_atomically(out, _layout_tar(dict(sorted(blobs.items())), manifests, docker_manifest))


def _run(cmd: list[str], what: str, **kwargs: Any) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise LabError(f"{what}: {' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")
    return proc.stdout


def _zstd() -> str:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise LabError("packing the lab's airgap images needs the zstd command (apt-get install zstd)")
    return zstd


def airgap_bundle(images: Sequence[Path], out: Path) -> Path:
    """All ``images`` in ONE tarball, zstd-compressed, as k3s's ``k3s-airgap-images-<arch>.tar.zst``; return ``out``.

    Reproducible: the same images in the same order give the same bytes (zstd -19, one thread).
    """
    zstd = _zstd()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="portable-k3s-airgap-", dir=out.parent) as work:
        tar = merged_archive(images, Path(work) / "images.tar")
        partial = Path(work) / out.name
        _run([zstd, "-q", "-19", "-T1", "-f", "-o", str(partial), str(tar)], f"compressing {out.name}")
        os.replace(partial, out)
    return out


def read_bundle(path: Path) -> Path:
    """Decompress a ``.tar.zst`` bundle into a temporary file; return its path (the caller deletes it)."""
    fd, tar = tempfile.mkstemp(prefix="portable-k3s-airgap-", suffix=".tar")
    os.close(fd)
    proc = subprocess.run([_zstd(), "-q", "-d", "-f", "-o", tar, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tar)
        raise LabError(f"zstd -d {path} failed ({proc.returncode}): {proc.stderr.strip()}")
    return Path(tar)


# -- building -------------------------------------------------------------------------------------------------


def _cache_key(*parts: str) -> str:
    return hashlib.sha256("\0".join((RECIPE_VERSION, *parts)).encode()).hexdigest()[:12]


def _images_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "images"


@contextmanager
def _step(what: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    log(f"{what} in {time.monotonic() - started:.1f}s")


def kubernetes_module_version(k3s_version: str) -> str:
    """The version of ``github.com/k3s-io/kubernetes`` that k3s ``v1.35.3+k3s1`` embeds: ``v1.35.3-k3s1``."""
    return k3s_version.replace("+", "-")


def kubernetes_source(k3s_version: str, offline: bool = False) -> Path:
    """The directory of the Kubernetes module the k3s version embeds, from the Go module cache (downloaded once,
    ~100 MB, through the Go module proxy; ``offline`` only looks in the cache)."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if go is None:
        raise LabError("building the lab's pause image needs the Go toolchain (go) to fetch Kubernetes' source")
    module = f"{KUBERNETES_MODULE}@{kubernetes_module_version(k3s_version)}"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    if offline:
        env["GOPROXY"] = "off"
    with tempfile.TemporaryDirectory(prefix="portable-k3s-kubernetes-") as work:  # outside any module
        cmd = [go, "mod", "download", "-json", module]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        info = {"Error": (proc.stderr or proc.stdout).strip()}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise LabError(f"go mod download {module} failed: {info.get('Error') or 'no Dir in its output'}")
    return Path(info["Dir"])


def pause_version(makefile: str, module_version: str) -> str:
    """The ``-DVERSION`` value the pause Makefile passes: ``v$(TAG)-$(REV)`` (REV: the tag of the source, i.e. the
    module version: ``git describe --contains`` of a tagged commit prints the tag)."""
    for line in makefile.splitlines():
        if line.replace(" ", "").startswith("TAG?="):
            return f"v{line.split('=', 1)[1].strip()}-{module_version}"
    raise LabError(f"no 'TAG ?=' line in {PAUSE_MAKEFILE}")


def compile_pause(source_dir: Path, module_version: str, out: Path) -> str:
    """Compile ``pause.c`` from ``source_dir`` (the Kubernetes module) as its Makefile does, stripped, into ``out``;
    return the version string it was built with."""
    gcc = shutil.which("gcc")
    strip = shutil.which("strip")
    if gcc is None or strip is None:
        raise LabError("building the lab's pause image needs gcc and strip (apt-get install gcc libc6-dev)")
    source = source_dir / PAUSE_SOURCE
    if not source.exists():
        raise LabError(f"{source} does not exist: is {source_dir} the Kubernetes module?")
    version = pause_version((source_dir / PAUSE_MAKEFILE).read_text(), module_version)
    _run([gcc, "-Os", "-Wall", "-Werror", "-static", f"-DVERSION={version}", "-o", str(out), str(source)],
         "compiling pause.c")
    _run([strip, str(out)], "stripping pause")
    return version


def build_pause(cache_dir: str | Path, k3s_version: str = VERSIONS["k3s"], source_dir: Path | None = None) -> Path:
    """The pause image (:data:`PAUSE_IMAGE`) as an OCI tarball, built once per k3s version; cached.

    + cache_dir: the lab's cache (the tarball goes under ``<cache_dir>/images/``)
    + k3s_version: the k3s whose Kubernetes provides ``pause.c``
    + source_dir: that Kubernetes module's directory (default: from the Go module cache / proxy)
    """
    module_version = kubernetes_module_version(k3s_version)
    arch = go_arch()
    out = _images_dir(cache_dir) / f"pause-{module_version}-{arch}-{_cache_key(PAUSE_IMAGE, module_version, arch)}.tar"
    if out.exists():
        return out
    if source_dir is None:
        with _step(f"found Kubernetes {module_version}'s source (Go module cache)"):
            source_dir = kubernetes_source(k3s_version)
    with tempfile.TemporaryDirectory(prefix="portable-k3s-pause-") as work, _step(f"built the pause image {out.name}"):
        binary = Path(work) / "pause"
        version = compile_pause(source_dir, module_version, binary)
        layer = tar_bytes([Entry("pause", binary.read_bytes(), 0o755)])
        config = {
            "User": "65535:65535",  # as upstream's Dockerfile
            "Entrypoint": ["/pause"],
            "Env": [PATH_ENV],
            "Labels": {
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description": (
                    f"pause.c {version} from {KUBERNETES_MODULE}@{module_version} {PAUSE_SOURCE}, "
                    "built by the portable-k3s lab under the name of k3s's sandbox image"
                ),
            },
        }
        oci_archive(PAUSE_IMAGE, [layer], config, out, created_by=f"gcc -Os -Wall -Werror -static -DVERSION={version}")
    return out


@dataclass(frozen=True)
class DebianPackage:
    """A Debian package as apt sees it here: the candidate version and its .deb's SHA256."""

    name: str
    version: str
    sha256: str


def apt_candidate(package: str) -> DebianPackage:
    """The candidate version of ``package`` in this machine's apt lists (no network)."""
    fields: dict[str, str] = {}
    text = _run(["apt-cache", "show", "--no-all-versions", package], f"looking up {package} in apt")
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("Version", "SHA256") and key not in fields:
            fields[key] = value.strip()
    if "Version" not in fields or "SHA256" not in fields:
        raise LabError(f"apt knows no candidate for {package} (run apt-get update?)")
    return DebianPackage(package, fields["Version"], fields["SHA256"])


def download_deb(package: DebianPackage, dest: Path) -> Path:
    """``apt-get download`` the package's candidate into ``dest`` and check its SHA256; return the .deb."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", "-q", f"{package.name}={package.version}"], f"downloading {package.name}", cwd=dest)
    debs = sorted(dest.glob(f"{package.name}_*.deb"))
    if not debs:
        raise LabError(f"apt-get download {package.name} wrote no .deb into {dest}")
    if hashlib.sha256(debs[-1].read_bytes()).hexdigest() != package.sha256:
        raise LabError(f"{debs[-1]}: SHA256 does not match apt's ({package.sha256})")
    return debs[-1]


def busybox_applets(busybox: Path) -> list[str]:
    """The applets the binary provides (``busybox --list``), sorted, without ``busybox`` itself."""
    applets = _run([str(busybox), "--list"], "listing busybox's applets").split()
    return sorted(a for a in set(applets) if a and "/" not in a and a != "busybox")


def busybox_layer(busybox: bytes, applets: Sequence[str], copyright_text: bytes = b"") -> bytes:
    """The root filesystem of the busybox image: ``/bin/busybox`` with an applet symlink for each of ``applets`` in
    /bin (as upstream's busybox image), root and nobody in /etc, /tmp, /root and the mount points."""
    entries = [
        Entry("bin/busybox", busybox, 0o755),
        *(Entry(f"bin/{applet}", link="busybox") for applet in applets),
        Entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        Entry("etc/group", b"root:x:0:\nnobody:x:65534:\n"),
        Entry("tmp/", mode=0o1777),
        Entry("root/", mode=0o700),
        *(Entry(f"{d}/", mode=0o755) for d in ("dev", "proc", "sys", "usr/bin", "usr/sbin", "var")),
    ]
    if copyright_text:
        entries.append(Entry(f"usr/share/doc/{BUSYBOX_PACKAGE}/copyright", copyright_text))
    return tar_bytes(_with_parents(entries))


def build_busybox(cache_dir: str | Path, deb: Path | None = None) -> Path:
    """The busybox test image (:data:`BUSYBOX_IMAGE`) as an OCI tarball, from Debian's ``busybox-static``, built
    once per package version; cached.

    + cache_dir: the lab's cache (the tarball goes under ``<cache_dir>/images/``)
    + deb: a ``busybox-static`` .deb to use (default: apt's candidate, downloaded with ``apt-get download``)
    """
    arch = go_arch()
    package = (
        apt_candidate(BUSYBOX_PACKAGE) if deb is None
        else DebianPackage(BUSYBOX_PACKAGE, deb.name.split("_")[1], hashlib.sha256(deb.read_bytes()).hexdigest())
    )
    version = package.version
    key = _cache_key(BUSYBOX_IMAGE, package.sha256, arch)
    out = _images_dir(cache_dir) / f"busybox-{version.replace(':', '_')}-{arch}-{key}.tar"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix="portable-k3s-busybox-") as work:
        if deb is None:
            with _step(f"downloaded {BUSYBOX_PACKAGE} {version}"):
                deb = download_deb(package, Path(work) / "deb")
        with _step(f"built the busybox image {out.name}"):
            root = Path(work) / "root"
            _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
            binary = root / "bin" / "busybox"
            if not binary.exists():
                raise LabError(f"{deb.name} has no /bin/busybox")
            copyright_file = root / "usr" / "share" / "doc" / BUSYBOX_PACKAGE / "copyright"
            layer = busybox_layer(
                binary.read_bytes(), busybox_applets(binary),
                copyright_file.read_bytes() if copyright_file.exists() else b"",
            )
            config = {
                "Cmd": ["sh"],
                "Env": [PATH_ENV],
                "Labels": {
                    "org.opencontainers.image.version": version,
                    "org.opencontainers.image.description": (
                        f"Debian's {BUSYBOX_PACKAGE} {version}: a portable-k3s lab test image"
                    ),
                },
            }
            oci_archive(BUSYBOX_IMAGE, [layer], config, out, created_by=f"dpkg-deb -x {deb.name}")
    return out


def coredns_binary_path(cache_dir: str | Path, version: str = COREDNS_VERSION) -> Path:
    """Where :func:`build_coredns_binary` keeps CoreDNS ``version`` (``<cache_dir>/go-bin/coredns-<V>-<arch>/``)."""
    return Path(cache_dir) / "go-bin" / f"coredns-{version}-{go_arch()}" / "coredns"


def build_coredns_binary(cache_dir: str | Path, version: str = COREDNS_VERSION, offline: bool = False) -> Path:
    """CoreDNS ``version`` (no leading v) built from its Go module with the default plugin set, static and stripped,
    into ``<cache_dir>/go-bin/coredns-<version>-<arch>/coredns``, once, as the lab's other Go tools
    (``gobuild.build_go_tool``); ``offline`` takes the modules from the Go module cache only."""
    tool = GoTool(COREDNS_MODULE, (COREDNS_MODULE,))
    return build_go_tool("coredns", tool, version, cache_dir, offline=offline) / "coredns"


def coredns_layer(coredns: bytes) -> bytes:
    """The root filesystem of the CoreDNS image: ``/coredns``, root, nobody and nonroot in /etc, and /tmp (the
    parts of upstream's distroless base that CoreDNS uses)."""
    return tar_bytes(_with_parents([
        Entry("coredns", coredns, 0o755),
        Entry("etc/passwd", (
            b"root:x:0:0:root:/root:/sbin/nologin\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
            b"nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n"
        )),
        Entry("etc/group", b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"),
        Entry("tmp/", mode=0o1777),
    ]))


def _binary_image_path(cache_dir: str | Path, stem: str, image: str, version: str, binary: bytes) -> Path:
    """Where the image of one program is cached: keyed by the image's name, the version, the binary and the arch."""
    arch = go_arch()
    key = _cache_key(image, version, hashlib.sha256(binary).hexdigest(), arch)
    return _images_dir(cache_dir) / f"{stem}-{version}-{arch}-{key}.tar"


def build_coredns(cache_dir: str | Path, binary: Path | None = None) -> Path:
    """The CoreDNS image (:data:`COREDNS_IMAGE`) as an OCI tarball, once per binary; cached.

    + cache_dir: the lab's cache (the tarball goes under ``<cache_dir>/images/``, the binary under ``go-bin/``)
    + binary: a CoreDNS :data:`COREDNS_VERSION` binary to use (default: :func:`build_coredns_binary`)
    """
    if binary is None:
        binary = build_coredns_binary(cache_dir)
    data = binary.read_bytes()
    out = _binary_image_path(cache_dir, "coredns", COREDNS_IMAGE, COREDNS_VERSION, data)
    if out.exists():
        return out
    with _step(f"built the CoreDNS image {out.name}"):
        config = {
            "User": COREDNS_USER,
            "Entrypoint": ["/coredns"],
            "Env": [PATH_ENV],
            "ExposedPorts": {"53/tcp": {}, "53/udp": {}},
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.version": COREDNS_VERSION,
                "org.opencontainers.image.description": (
                    f"CoreDNS {COREDNS_VERSION} from {COREDNS_MODULE}@v{COREDNS_VERSION} (default plugins, CGO off), "
                    f"built by the portable-k3s lab under the name of k3s's CoreDNS image ({image_tag(COREDNS_IMAGE)})"
                ),
            },
        }
        created_by = f"go build -trimpath -ldflags='-s -w' {COREDNS_MODULE}@v{COREDNS_VERSION} (CGO_ENABLED=0)"
        oci_archive(COREDNS_IMAGE, [coredns_layer(data)], config, out, created_by=created_by)
    return out


def build_traefik_binary(cache_dir: str | Path, version: str = TRAEFIK_VERSION) -> Path:
    """Traefik ``version`` built inside its own module (its replace directives apply), as its release is built
    (``./cmd/traefik`` with the version in ``pkg/version``), static and stripped; cached under ``go-bin/``."""
    ldflags = f"-X {TRAEFIK_MODULE}/pkg/version.Version={version}"
    return build_in_module("traefik", TRAEFIK_MODULE, version, "./cmd/traefik", ldflags, cache_dir)


def traefik_crds(version: str = TRAEFIK_VERSION, offline: bool = False) -> bytes:
    """Traefik's CRD definitions at ``version``, from its Go module."""
    return (module_source(TRAEFIK_MODULE, f"v{version}", offline) / TRAEFIK_CRDS).read_bytes()


def build_traefik(cache_dir: str | Path, binary: Path | None = None) -> Path:
    """The Traefik image (:data:`TRAEFIK_IMAGE`) as an OCI tarball, once per binary; cached. Entrypoint: the binary,
    so the chart's arguments are Traefik's (upstream's entrypoint script does the same for arguments starting ``-``)."""
    if binary is None:
        binary = build_traefik_binary(cache_dir)
    data = binary.read_bytes()
    out = _binary_image_path(cache_dir, "traefik", TRAEFIK_IMAGE, TRAEFIK_VERSION, data)
    if out.exists():
        return out
    with _step(f"built the Traefik image {out.name}"):
        layer = tar_bytes(_with_parents([
            Entry("usr/local/bin/traefik", data, 0o755),
            Entry("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n"
                                b"nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n"),
            Entry("etc/group", b"root:x:0:\nnonroot:x:65532:\n"),
            Entry("tmp/", mode=0o1777),
            Entry("data/", mode=0o777),
        ]))
        config = {
            "User": TRAEFIK_USER,
            "Entrypoint": ["/usr/local/bin/traefik"],
            "Env": [PATH_ENV],
            "ExposedPorts": {"80/tcp": {}},
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.version": f"v{TRAEFIK_VERSION}",
                "org.opencontainers.image.description": (
                    f"Traefik v{TRAEFIK_VERSION} from {TRAEFIK_MODULE}@v{TRAEFIK_VERSION} (CGO off), built by the "
                    "portable-k3s lab under the name of k3s's mirrored Traefik image"
                ),
            },
        }
        oci_archive(TRAEFIK_IMAGE, [layer], config, out,
                    created_by=f"go build -trimpath -ldflags='-s -w' ./cmd/traefik in "
                               f"{TRAEFIK_MODULE}@v{TRAEFIK_VERSION}")
    return out


def restic_binary_path(cache_dir: str | Path, version: str = RESTIC_VERSION) -> Path:
    """Where :func:`build_restic_binary` keeps restic ``version`` (``<cache_dir>/go-bin/restic-<V>-<arch>/``)."""
    return Path(cache_dir) / "go-bin" / f"restic-{version}-{go_arch()}" / "restic"


def build_restic_binary(cache_dir: str | Path, version: str = RESTIC_VERSION, offline: bool = False) -> Path:
    """restic ``version`` (no leading v) built from its Go module as its release is (``./cmd/restic``, CGO off,
    stripped, :data:`RESTIC_BUILD_TAGS`) into ``<cache_dir>/go-bin/restic-<version>-<arch>/restic``, once;
    ``offline`` takes the modules from the Go module cache only."""
    tool = GoTool(RESTIC_MODULE, (f"{RESTIC_MODULE}/cmd/restic",), RESTIC_BUILD_TAGS)
    return build_go_tool("restic", tool, version, cache_dir, offline=offline) / "restic"


def _resolve_in(root: Path, path: str) -> str:
    """``path`` (relative to ``root``) with its symlinks followed inside ``root`` (absolute links mean ``root``)."""
    parts = [p for p in path.strip("/").split("/") if p]
    done: list[str] = []
    for _ in range(64):
        if not parts:
            return "/".join(done)
        part = parts.pop(0)
        candidate = root.joinpath(*done, part)
        if candidate.is_symlink():
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                done = []
            continue
        if part == "..":
            done = done[:-1]
        elif part != ".":
            done.append(part)
    raise LabError(f"{path}: too many symlinks under {root}")


def _loaded_libraries(root: Path, binary: Path) -> list[str]:
    """The paths (inside ``root``, unpacked packages) of the shared objects ``binary`` loads, its loader first."""
    interpreter = next((p for p in ("lib64/ld-linux-x86-64.so.2", "lib/ld-linux-aarch64.so.1")
                        if (root / p).is_symlink() or (root / p).exists()), None)
    if interpreter is None:
        raise LabError(f"no dynamic loader under {root}")
    loader = root / _resolve_in(root, interpreter)
    found_dirs = [*sorted(root.glob("lib/*-linux-gnu*")), *sorted(root.glob("usr/lib/*-linux-gnu*"))]
    dirs = ":".join(str(d) for d in found_dirs)
    listing = _run([str(loader), "--library-path", dirs, "--list", str(binary)], f"listing {binary.name}'s libraries")
    found = [interpreter]
    for line in listing.splitlines():
        path = next((w for w in line.split() if w.startswith(str(root) + "/")), None)
        if path is not None:
            found.append(path[len(str(root)) + 1:])
    return found


def unpack_debs(packages: Sequence[DebianPackage], work: Path) -> Path:
    """Download ``packages`` (apt's candidates, checked) into ``<work>/debs`` and unpack them all into
    ``<work>/root``; return that root."""
    root = work / "root"
    for package in packages:
        deb = download_deb(package, work / "debs")
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
    return root


def busybox_entries(root: Path, applets: Sequence[str]) -> list[Entry]:
    """``/bin/busybox`` from Debian's busybox-static unpacked under ``root`` and a link to it in /bin for each of
    ``applets`` (each checked against ``busybox --list``)."""
    busybox = root / "bin" / "busybox"
    if not busybox.exists():
        raise LabError(f"no /bin/busybox under {root}: is {BUSYBOX_PACKAGE} unpacked there?")
    missing = sorted(set(applets) - set(busybox_applets(busybox)))
    if missing:
        raise LabError(f"{BUSYBOX_PACKAGE} has no applet {', '.join(missing)}")
    return [Entry("bin/busybox", busybox.read_bytes(), 0o755), *(Entry(f"bin/{a}", link="busybox") for a in applets)]


def program_entries(root: Path, program: str) -> list[Entry]:
    """``program`` (its path, e.g. ``usr/sbin/nginx``) from the packages unpacked under ``root``, and every shared
    object it loads: the real files, plus the links it loads them by."""
    entries = [Entry(program, (root / program).read_bytes(), 0o755)]
    for library in _loaded_libraries(root, root / program):
        real = _resolve_in(root, library)
        entries.append(Entry(real, (root / real).read_bytes(), 0o755))
        if real != library:
            entries.append(Entry(library, link="/" + real))
    return entries


def build_debian_program_image(
    cache_dir: str | Path,
    image: str,
    program: str,
    packages: Sequence[DebianPackage],
    applets: Sequence[str],
    files: Callable[[Path], Sequence[Entry]],
    config: Mapping[str, Any],
    recipe: Sequence[str] = (),
) -> Path:
    """An image of one Debian program as an OCI tarball: the program and the libraries it loads, busybox-static's
    ``applets`` in /bin, and ``files``; built once per package versions; cached.

    + cache_dir: the lab's cache (the tarball goes under ``<cache_dir>/images/``)
    + image: the full image name
    + program: the program's path in its package and in the image (``usr/sbin/nginx``)
    + packages: apt's candidates of the program's package (first: it names the tarball) and of the libraries it
      loads; busybox-static is added
    + applets: the busybox applets to link in /bin
    + files: the image's other files, from the root the packages are unpacked under (configuration, users, /tmp…)
    + config: the runtime part of the image config (see :func:`oci_archive`)
    + recipe: anything else that defines the image's content (part of the cache key, e.g. a configuration file)

    .. code:: python

        packages = [apt_candidate(name) for name in SQLITE_PACKAGES]
        build_debian_program_image(cache_dir, SQLITE_IMAGE, "usr/bin/sqlite3", packages, ["sh"],
                                   lambda root: [Entry("tmp/", mode=0o1777)], {"Cmd": ["sqlite3"]})
    """
    arch = go_arch()
    everything = [*packages, apt_candidate(BUSYBOX_PACKAGE)]
    key = _cache_key(image, *(p.sha256 for p in everything), *recipe, arch)
    name, version = program.rsplit("/", 1)[-1], packages[0].version
    out = _images_dir(cache_dir) / f"{name}-{version.replace(':', '_')}-{arch}-{key}.tar"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix=f"portable-k3s-{name}-") as work:
        with _step(f"downloaded Debian's {name} {version} and the packages it loads"):
            root = unpack_debs(everything, Path(work))
        with _step(f"built the {name} image {out.name}"):
            entries = [*program_entries(root, program), *busybox_entries(root, applets), *files(root)]
            unique = {e.path: e for e in entries}
            oci_archive(image, [tar_bytes(_with_parents(list(unique.values())))], config, out,
                        created_by=f"dpkg-deb -x {' '.join(p.name + '=' + p.version for p in everything)}")
    return out


def build_nginx(cache_dir: str | Path) -> Path:
    """The static kind's image (:data:`STATIC_IMAGE`) as an OCI tarball, from Debian's nginx: ``/usr/sbin/nginx``
    and the libraries it loads (from the packages apt would install), mime.types, the official image's
    configuration (:data:`NGINX_CONF`), its ``nginx`` user, and busybox for a shell; built once per package
    versions; cached."""
    packages = [apt_candidate(name) for name in NGINX_PACKAGES]
    version = packages[0].version

    def nginx_files(root: Path) -> list[Entry]:
        return [
            Entry("etc/nginx/nginx.conf", NGINX_CONF),
            Entry("etc/nginx/mime.types", (root / "etc" / "nginx" / "mime.types").read_bytes()),
            Entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n"),
            Entry("etc/group", b"root:x:0:\nnginx:x:101:\n"),
            Entry("usr/share/nginx/html/index.html", b"<h1>Welcome to nginx!</h1>\n"),
            *(Entry(f"{d}/", mode=0o755) for d in ("var/lib/nginx", "var/log/nginx", "run", "root")),
            Entry("tmp/", mode=0o1777),
            Entry("usr/share/doc/nginx/copyright", (root / "usr/share/doc/nginx/copyright").read_bytes()),
        ]

    config = {
        "Entrypoint": ["/usr/sbin/nginx"],
        "Cmd": ["-g", "daemon off;"],
        "Env": [PATH_ENV],
        "ExposedPorts": {"80/tcp": {}},
        "StopSignal": "SIGQUIT",
        "Labels": {
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.description": (
                f"Debian's nginx {version} with the official image's configuration: the portable-k3s lab's "
                f"image under the static kind's name ({image_tag(STATIC_IMAGE)}), not upstream's build"
            ),
        },
    }
    return build_debian_program_image(cache_dir, STATIC_IMAGE, "usr/sbin/nginx", packages, NGINX_APPLETS,
                                      nginx_files, config, recipe=(NGINX_CONF.decode(),))


def backup_base_entries(root: Path) -> list[Entry]:
    """What the backup images share besides busybox: root and nobody in /etc, root's home, /tmp, and busybox's
    copyright (from busybox-static unpacked under ``root``)."""
    copyright_file = root / "usr" / "share" / "doc" / BUSYBOX_PACKAGE / "copyright"
    return [
        Entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        Entry("etc/group", b"root:x:0:\nnobody:x:65534:\n"),
        Entry("root/", mode=0o700),
        Entry("tmp/", mode=0o1777),
        *([Entry(f"usr/share/doc/{BUSYBOX_PACKAGE}/copyright", copyright_file.read_bytes())]
          if copyright_file.exists() else []),
    ]


def build_sqlite(cache_dir: str | Path) -> Path:
    """The backups' sqlite3 image (:data:`SQLITE_IMAGE`) as an OCI tarball, from Debian's sqlite3:
    ``/usr/bin/sqlite3`` and the libraries it loads, busybox's :data:`BACKUP_APPLETS`; its command is ``sqlite3``
    (as upstream's), run as root; built once per package versions; cached."""
    packages = [apt_candidate(name) for name in SQLITE_PACKAGES]
    version = packages[0].version

    def sqlite_files(root: Path) -> list[Entry]:
        return [
            *backup_base_entries(root),
            Entry("usr/share/doc/sqlite3/copyright", (root / "usr/share/doc/sqlite3/copyright").read_bytes()),
        ]

    config = {
        "Cmd": ["sqlite3"],
        "Env": [PATH_ENV],
        "Labels": {
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.description": (
                f"Debian's sqlite3 {version}: the portable-k3s lab's image under the pinned image's name "
                f"({familiar_name(SQLITE_IMAGE)}), not upstream's build"
            ),
        },
    }
    return build_debian_program_image(cache_dir, SQLITE_IMAGE, "usr/bin/sqlite3", packages, BACKUP_APPLETS,
                                      sqlite_files, config, recipe=BACKUP_APPLETS)


def build_restic(cache_dir: str | Path, binary: Path | None = None) -> Path:
    """The backups' restic image (:data:`RESTIC_IMAGE`) as an OCI tarball: ``/usr/bin/restic`` (the entrypoint, as
    upstream's) and Debian's busybox-static with :data:`BACKUP_APPLETS` for the backup scripts; built once per
    binary and busybox; cached.

    + cache_dir: the lab's cache (the tarball goes under ``<cache_dir>/images/``, the binary under ``go-bin/``)
    + binary: a restic :data:`RESTIC_VERSION` binary to use (default: :func:`build_restic_binary`)
    """
    if binary is None:
        binary = build_restic_binary(cache_dir)
    data = binary.read_bytes()
    busybox = apt_candidate(BUSYBOX_PACKAGE)
    arch = go_arch()
    key = _cache_key(RESTIC_IMAGE, RESTIC_VERSION, hashlib.sha256(data).hexdigest(), busybox.sha256,
                     *BACKUP_APPLETS, arch)
    out = _images_dir(cache_dir) / f"restic-{RESTIC_VERSION}-{arch}-{key}.tar"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix="portable-k3s-restic-") as work:
        with _step(f"downloaded {BUSYBOX_PACKAGE} {busybox.version}"):
            root = unpack_debs([busybox], Path(work))
        with _step(f"built the restic image {out.name}"):
            entries = [Entry("usr/bin/restic", data, 0o755), *busybox_entries(root, BACKUP_APPLETS),
                       *backup_base_entries(root)]
            config = {
                "Entrypoint": ["/usr/bin/restic"],
                "Env": [PATH_ENV],
                "Labels": {
                    "org.opencontainers.image.version": RESTIC_VERSION,
                    "org.opencontainers.image.description": (
                        f"restic {RESTIC_VERSION} from {RESTIC_MODULE}@v{RESTIC_VERSION} (./cmd/restic, CGO off), "
                        f"built by the portable-k3s lab under upstream's image name ({familiar_name(RESTIC_IMAGE)}), "
                        f"with Debian's {BUSYBOX_PACKAGE} {busybox.version} for a shell"
                    ),
                },
            }
            created_by = (f"go build -trimpath -tags {','.join(RESTIC_BUILD_TAGS)} -ldflags='-s -w' ./cmd/restic in "
                          f"{RESTIC_MODULE}@v{RESTIC_VERSION} (CGO_ENABLED=0); dpkg-deb -x {BUSYBOX_PACKAGE}="
                          f"{busybox.version}")
            oci_archive(RESTIC_IMAGE, [tar_bytes(_with_parents(entries))], config, out, created_by=created_by)
    return out


def airgap_file_name(arch: str | None = None) -> str:
    """k3s's release asset name: ``k3s-airgap-images-<arch>.tar.zst``."""
    return f"k3s-airgap-images-{arch or go_arch()}.tar.zst"


def build_airgap_images(cache_dir: str | Path, k3s_version: str = VERSIONS["k3s"]) -> Path:
    """Every lab image (pause, busybox, CoreDNS, Traefik, nginx, restic, sqlite3) in one
    ``k3s-airgap-images-<arch>.tar.zst``, built once per inputs; cached.

    Put it (under any name ending ``.tar.zst``) into :data:`AIRGAP_DIR` on a node, or serve it where k3s's release
    publishes that asset.
    """
    with _step("lab images ready"):
        images = [build_pause(cache_dir, k3s_version), build_busybox(cache_dir), build_coredns(cache_dir),
                  build_traefik(cache_dir), build_nginx(cache_dir), build_restic(cache_dir), build_sqlite(cache_dir)]
        key = _cache_key(*(image.name for image in images))
        out = _images_dir(cache_dir) / f"airgap-{key}" / airgap_file_name()
        if not out.exists():
            with _step(f"packed {len(images)} images into {out}"):
                airgap_bundle(images, out)
    return out
