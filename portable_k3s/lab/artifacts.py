"""Release artifacts for the lab, built from their Go modules at the pinned versions.

Binaries are built once per version with the Go toolchain (through the Go module proxy, CGO off) and cached
outside the repository; then they are laid out in the artifact server's directory exactly as the upstream
release URLs lay them out, with the same checksum files, so lab hosts take the same download-and-verify path
real hosts take from upstream:

* headscale: ``<base>/v{V}/headscale_{V}_linux_{arch}`` and ``<base>/v{V}/checksums.txt``
  (upstream base: https://github.com/juanfont/headscale/releases/download)
* tailscale: ``<base>/tailscale_{V}_{arch}.tgz`` and ``<base>/tailscale_{V}_{arch}.tgz.sha256``
  (upstream base: https://pkgs.tailscale.com/stable)
* k3s: ``<base>/{V}/k3s`` and ``<base>/{V}/sha256sum-{arch}.txt`` (upstream base:
  https://github.com/k3s-io/k3s/releases/download). k3s itself cannot be obtained here: the file served as
  ``k3s`` is the lab's K3S STAND-IN (``portable_k3s/lab/k3s_standin``), built from this repository, which says
  so in its ``--version`` output.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..versions import VERSIONS
from . import gobuild
from .common import LabError, go_arch
from .gobuild import GoTool
from .images import TRAEFIK_VERSION, build_airgap_images, traefik_crds

GO_TOOLS: dict[str, GoTool] = {
    "headscale": GoTool("github.com/juanfont/headscale", ("github.com/juanfont/headscale/cmd/headscale",)),
    "tailscale": GoTool("tailscale.com", ("tailscale.com/cmd/tailscale", "tailscale.com/cmd/tailscaled")),
}

# Where each component's release files sit under the artifact server's root (mirrors the upstream paths).
HEADSCALE_PATH = "juanfont/headscale/releases/download"
TAILSCALE_PATH = "tailscale/stable"
K3S_PATH = "k3s-io/k3s/releases/download"
SUPERVISOR_SOURCE = Path(__file__).parent / "k3s_standin"
KUBERNETES_FORK = "github.com/k3s-io/kubernetes"


def build_go_tool(name: str, version: str, cache_dir: str) -> Path:
    """Build ``name`` (headscale, tailscale) at ``version`` (no leading v), once; see ``gobuild.build_go_tool``."""
    return gobuild.build_go_tool(name, GO_TOOLS[name], version, cache_dir)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish_headscale(version: str, cache_dir: str, artifact_dir: Path) -> Path:
    """Lay out headscale's release files (binary + checksums.txt) as upstream publishes them."""
    built = build_go_tool("headscale", version, cache_dir)
    dest = artifact_dir / HEADSCALE_PATH / f"v{version}"
    dest.mkdir(parents=True, exist_ok=True)
    name = f"headscale_{version}_linux_{go_arch()}"
    data = (built / "headscale").read_bytes()
    (dest / name).write_bytes(data)
    (dest / "checksums.txt").write_text(f"{_sha256(data)}  {name}\n")
    return dest / name


def publish_tailscale(version: str, cache_dir: str, artifact_dir: Path) -> Path:
    """Lay out tailscale's static tarball (``tailscale_{V}_{arch}/{tailscale,tailscaled}``) + its .sha256."""
    built = build_go_tool("tailscale", version, cache_dir)
    dest = artifact_dir / TAILSCALE_PATH
    dest.mkdir(parents=True, exist_ok=True)
    stem = f"tailscale_{version}_{go_arch()}"
    tarball = dest / f"{stem}.tgz"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for binary in ("tailscale", "tailscaled"):
            info = tar.gettarinfo(str(built / binary), arcname=f"{stem}/{binary}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            with open(built / binary, "rb") as f:
                tar.addfile(info, f)
    data = buffer.getvalue()
    tarball.write_bytes(data)
    (dest / f"{stem}.tgz.sha256").write_text(f"{_sha256(data)}\n")
    return tarball


def kubernetes_fork_version(source_dir: Path = SUPERVISOR_SOURCE) -> str:
    """The version of ``github.com/k3s-io/kubernetes`` the stand-in is built from (its go.mod's replace)."""
    for line in (source_dir / "go.mod").read_text().splitlines():
        words = line.split()
        if words[:2] == ["k8s.io/kubernetes", "=>"] and len(words) == 4:
            return words[3]
    raise LabError(f"{source_dir / 'go.mod'}: no replace of k8s.io/kubernetes by {KUBERNETES_FORK}")


def _source_hash(source_dir: Path) -> str:
    """The sha256 of every file of the stand-in's source (Go files, go.mod, go.sum, the embedded manifests)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_k3s_standin(version: str, cache_dir: str) -> Path:
    """Build the K3S STAND-IN answering as k3s ``version`` (real Kubernetes inside, see
    ``portable_k3s/lab/k3s_standin``), once per version and source; cached.

    It is built from a copy of its source with Traefik's CRD definitions (``charts/traefik-crd.yaml``, from the
    Traefik module the lab's Traefik image is built from) added, as k3s embeds its traefik-crd chart.
    """
    crds = traefik_crds(TRAEFIK_VERSION)
    source_hash = hashlib.sha256(_source_hash(SUPERVISOR_SOURCE).encode() + crds).hexdigest()
    out = Path(cache_dir) / "go-bin" / f"k3s-standin-{version}-{go_arch()}-{source_hash[:12]}" / "k3s"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fork = kubernetes_fork_version()
    major, minor = version.lstrip("v").split(".")[:2]
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath -mod=readonly", "GOTOOLCHAIN": "local"}
    ldflags = " ".join([
        "-s", "-w", f"-X k8s.io/component-base/version.gitVersion={version}",
        f"-X k8s.io/component-base/version.gitMajor={major}", f"-X k8s.io/component-base/version.gitMinor={minor}",
        f"-X main.kubernetesVersion={fork}",
    ])
    go = gobuild.go()
    with tempfile.TemporaryDirectory(prefix="portable-k3s-standin-") as work:
        source = Path(work) / "k3s_standin"
        shutil.copytree(SUPERVISOR_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
        (source / "charts" / "traefik-crd.yaml").write_bytes(crds)
        gobuild.run_step([go, "mod", "download"], source, env,
                         f"downloading the Go modules of Kubernetes {fork}, etcd and flannel (once)")
        gobuild.run_step([go, "build", "-tags", "providerless", f"-ldflags={ldflags}", "-o", f"{out}.partial", "."],
                         source, env, f"building the k3s stand-in {version} around Kubernetes {fork} "
                         "(kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy, etcd, flannel; "
                         "minutes the first time, cached in the Go build cache)")
    os.replace(f"{out}.partial", out)
    return out


def publish_k3s_standin(version: str, cache_dir: str, artifact_dir: Path, sha256: str | None = None) -> Path:
    """Lay out the K3S STAND-IN as k3s's release files: ``{V}/k3s``, ``{V}/k3s-airgap-images-{arch}.tar.zst``
    (the lab's images, see ``images.build_airgap_images``) and ``{V}/sha256sum-{arch}.txt``
    (``sha256`` replaces the binary's real checksum, to publish a release whose checksum does not match)."""
    data = build_k3s_standin(version, cache_dir).read_bytes()
    # The images of the Kubernetes every stand-in embeds: the pinned k3s's (another version's fork may be refused).
    images = build_airgap_images(cache_dir, VERSIONS["k3s"]).read_bytes()
    arch = go_arch()
    name = {"amd64": "k3s", "arm64": "k3s-arm64", "arm": "k3s-armhf"}.get(arch, "k3s")
    dest = artifact_dir / K3S_PATH / version
    dest.mkdir(parents=True, exist_ok=True)
    (dest / name).write_bytes(data)
    (dest / f"k3s-airgap-images-{arch}.tar.zst").write_bytes(images)
    (dest / f"sha256sum-{arch}.txt").write_text(
        f"{sha256 or _sha256(data)}  {name}\n{_sha256(images)}  k3s-airgap-images-{arch}.tar.zst\n"
    )
    return dest / name


def publish_all(versions: dict[str, str], cache_dir: str, artifact_dir: Path) -> dict[str, Path]:
    """Build (cached) and publish every component the deploys download (k3s: its lab stand-in).

    The builds run side by side: on a machine with empty caches each one spends minutes fetching Go modules, which
    another one's compiling fills (the Go module and build caches take concurrent builds).
    """
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="lab-build") as pool:
        headscale = pool.submit(publish_headscale, versions["headscale"], cache_dir, artifact_dir)
        tailscale = pool.submit(publish_tailscale, versions["tailscale"], cache_dir, artifact_dir)
        builds = [pool.submit(build_k3s_standin, versions["k3s"], cache_dir),
                  pool.submit(build_airgap_images, cache_dir, VERSIONS["k3s"])]
        for future in [headscale, tailscale, *builds]:
            future.result()  # the first failure, with its build's output
    return {
        "headscale": headscale.result(),
        "tailscale": tailscale.result(),
        "k3s": publish_k3s_standin(versions["k3s"], cache_dir, artifact_dir),
    }
