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
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .core import LabError, log


@dataclass(frozen=True)
class GoTool:
    """A command built from a Go module: ``go build <package>`` at ``module@version``."""

    module: str
    packages: tuple[str, ...]


GO_TOOLS: dict[str, GoTool] = {
    "headscale": GoTool("github.com/juanfont/headscale", ("github.com/juanfont/headscale/cmd/headscale",)),
    "tailscale": GoTool("tailscale.com", ("tailscale.com/cmd/tailscale", "tailscale.com/cmd/tailscaled")),
}

# Where each component's release files sit under the artifact server's root (mirrors the upstream paths).
HEADSCALE_PATH = "juanfont/headscale/releases/download"
TAILSCALE_PATH = "tailscale/stable"
K3S_PATH = "k3s-io/k3s/releases/download"
STANDIN_SOURCE = Path(__file__).parent / "k3s_standin" / "main.go"


def go_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def build_go_tool(name: str, version: str, cache_dir: str) -> Path:
    """Build ``name`` at ``version`` (no leading v) into ``<cache_dir>/go-bin/<name>-<version>-<arch>/``, once.

    A throwaway module pins the version with ``go get`` and builds from it: ``go install pkg@version`` would
    also ask the proxy for the module's version list, which the proxy may refuse for some modules.
    """
    tool = GO_TOOLS[name]
    out = Path(cache_dir) / "go-bin" / f"{name}-{version}-{go_arch()}"
    binaries = [out / pkg.rsplit("/", 1)[1] for pkg in tool.packages]
    if all(b.exists() for b in binaries):
        return out
    go = _go()
    started = time.monotonic()
    log(f"building {name} v{version} from its Go module (once; cached in {out})")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath -mod=mod", "GOTOOLCHAIN": "local"}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix=f"portable-k3s-build-{name}-") as work:
        steps = [
            [go, "mod", "init", f"portable-k3s.invalid/build-{name}"],
            [go, "get", *(f"{pkg}@v{version}" for pkg in tool.packages)],
            [go, "build", "-ldflags=-s -w", "-o", str(partial) + "/", *tool.packages],
        ]
        for step in steps:
            proc = subprocess.run(step, cwd=work, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise LabError(f"building {name} v{version}: {' '.join(step)} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    log(f"built {name} v{version} in {time.monotonic() - started:.0f}s")
    return out


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


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if go is None:
        raise LabError("building the lab's artifacts needs the Go toolchain (go) on PATH")
    return go


def build_k3s_standin(version: str, cache_dir: str) -> Path:
    """Build the K3S STAND-IN (not k3s) answering as ``version``, once per version and source; cached."""
    source = STANDIN_SOURCE.read_bytes()
    out = Path(cache_dir) / "go-bin" / f"k3s-standin-{version}-{go_arch()}-{_sha256(source)[:12]}" / "k3s"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath", "GOTOOLCHAIN": "local"}
    with tempfile.TemporaryDirectory(prefix="portable-k3s-build-k3s-standin-") as work:
        (Path(work) / "main.go").write_bytes(source)
        steps = [
            [_go(), "mod", "init", "portable-k3s.invalid/k3s-standin"],
            [_go(), "build", f"-ldflags=-s -w -X main.version={version}", "-o", str(out) + ".partial", "."],
        ]
        for step in steps:
            proc = subprocess.run(step, cwd=work, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise LabError(f"building the k3s stand-in {version}: {' '.join(step)} failed:\n{proc.stderr[-3000:]}")
    os.replace(str(out) + ".partial", out)
    return out


def publish_k3s_standin(version: str, cache_dir: str, artifact_dir: Path, sha256: str | None = None) -> Path:
    """Lay out the K3S STAND-IN as k3s's release files: ``{V}/k3s``, ``{V}/sha256sum-{arch}.txt`` and a
    placeholder ``{V}/k3s-airgap-images-{arch}.tar.zst``
    (``sha256`` replaces the real checksum, to publish a release whose checksum does not match)."""
    data = build_k3s_standin(version, cache_dir).read_bytes()
    arch = go_arch()
    name = {"amd64": "k3s", "arm64": "k3s-arm64", "arm": "k3s-armhf"}.get(arch, "k3s")
    dest = artifact_dir / K3S_PATH / version
    dest.mkdir(parents=True, exist_ok=True)
    (dest / name).write_bytes(data)
    # Where k3s publishes its system images: a placeholder here (the stand-in runs no containers).
    images = f"lab placeholder for k3s-airgap-images-{arch}.tar.zst of {version}: not container images\n".encode()
    (dest / f"k3s-airgap-images-{arch}.tar.zst").write_bytes(images)
    (dest / f"sha256sum-{arch}.txt").write_text(
        f"{sha256 or _sha256(data)}  {name}\n{_sha256(images)}  k3s-airgap-images-{arch}.tar.zst\n"
    )
    return dest / name


def publish_all(versions: dict[str, str], cache_dir: str, artifact_dir: Path) -> dict[str, Path]:
    """Build (cached) and publish every component the deploys download (k3s: its lab stand-in)."""
    return {
        "headscale": publish_headscale(versions["headscale"], cache_dir, artifact_dir),
        "tailscale": publish_tailscale(versions["tailscale"], cache_dir, artifact_dir),
        "k3s": publish_k3s_standin(versions["k3s"], cache_dir, artifact_dir),
    }
