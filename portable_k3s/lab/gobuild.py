"""Go builds for the lab: the toolchain, build steps that say how long they take, commands built from Go modules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .common import LabError, go_arch, log


@dataclass(frozen=True)
class GoTool:
    """A command built from a Go module: ``go build <package>`` at ``module@version`` (with build ``tags``)."""

    module: str
    packages: tuple[str, ...]
    tags: tuple[str, ...] = ()


def go() -> str:
    """The Go toolchain's ``go``."""
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if found is None:
        raise LabError("building the lab's artifacts needs the Go toolchain (go) on PATH")
    return found


def run_step(cmd: list[str], cwd: Path, env: Mapping[str, str], what: str) -> None:
    """Run one build step, logging its time when done and every 30 s while it runs (cold builds take minutes)."""
    started = time.monotonic()
    log(f"{what} ...")
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdout=output, stderr=subprocess.STDOUT)
        while True:
            try:
                proc.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                log(f"{what}: still running ({time.monotonic() - started:.0f} s)")
        output.seek(0)
        text = output.read().decode(errors="replace")
    if proc.returncode != 0:
        raise LabError(f"{what}: {' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    log(f"{what}: done in {time.monotonic() - started:.0f} s")


def build_go_tool(name: str, tool: GoTool, version: str, cache_dir: str | Path, offline: bool = False) -> Path:
    """Build ``tool`` at ``version`` (no leading v) into ``<cache_dir>/go-bin/<name>-<version>-<arch>/``, once
    (CGO off, ``-trimpath``, stripped); ``offline`` takes the modules from the Go module cache only.

    A throwaway module pins the version with ``go get`` and builds from it: ``go install pkg@version`` would
    also ask the proxy for the module's version list, which the proxy may refuse for some modules.
    """
    out = Path(cache_dir) / "go-bin" / f"{name}-{version}-{go_arch()}"
    if all((out / pkg.rsplit("/", 1)[1]).exists() for pkg in tool.packages):
        return out
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath -mod=mod", "GOTOOLCHAIN": "local"}
    if offline:
        env["GOPROXY"] = "off"
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix=f"portable-k3s-build-{name}-") as work:
        run_step([go(), "mod", "init", f"portable-k3s.invalid/build-{name}"], Path(work), env, f"{name}: go mod init")
        run_step([go(), "get", *(f"{pkg}@v{version}" for pkg in tool.packages)], Path(work), env,
                 f"{name} v{version}: fetching its Go module (once; cached in {out})")
        tags = [f"-tags={','.join(tool.tags)}"] if tool.tags else []
        run_step([go(), "build", *tags, "-ldflags=-s -w", "-o", str(partial) + "/", *tool.packages], Path(work), env,
                 f"{name} v{version}: building")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def module_source(module: str, version: str, offline: bool = False) -> Path:
    """The read-only source of ``module`` at ``version`` (leading v) in the Go module cache, downloaded once."""
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", **({"GOPROXY": "off"} if offline else {})}
    proc = subprocess.run([go(), "mod", "download", "-json", f"{module}@{version}"], env=env, capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    try:
        found = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        found = {}
    if proc.returncode != 0 or not found.get("Dir"):
        raise LabError(f"go mod download {module}@{version} failed: {found.get('Error') or proc.stderr.strip()}")
    return Path(found["Dir"])


def build_in_module(name: str, module: str, version: str, package: str, ldflags: str, cache_dir: str | Path) -> Path:
    """Build ``package`` (e.g. ``./cmd/traefik``) inside ``module``'s own source at ``version`` (no leading v), so its
    go.mod's replace directives apply, into ``<cache_dir>/go-bin/<name>-<version>-<arch>/<name>``, once (CGO off,
    ``-trimpath``, stripped, plus ``ldflags``)."""
    out = Path(cache_dir) / "go-bin" / f"{name}-{version}-{go_arch()}" / name
    if out.exists():
        return out
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath -mod=mod", "GOTOOLCHAIN": "local"}
    log(f"{name} v{version}: fetching its Go module (once; cached in {out.parent})")
    source = module_source(module, f"v{version}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"portable-k3s-build-{name}-") as work:
        tree = Path(work) / "src"
        shutil.copytree(source, tree)
        for path in [tree, *tree.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
        run_step([go(), "build", f"-ldflags=-s -w {ldflags}".strip(), "-o", f"{out}.partial", package], tree, env,
                 f"{name} v{version}: building (minutes the first time)")
    os.replace(f"{out}.partial", out)
    return out
