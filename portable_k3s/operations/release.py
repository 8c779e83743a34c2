"""Install release binaries from a download URL, verified by sha256 before anything is installed."""

from __future__ import annotations

import posixpath
import re
from typing import Any

from pyinfra import host
from pyinfra.api import OperationError, OperationValueError, QuoteString, StringCommand
from pyinfra.facts.server import Arch

from ..facts.release import RELEASE_STATE_DIR, InstalledRelease
from .files import marked
from .util import host_operation, shared_fact

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


MACHINES = ("x86_64", "aarch64", "armv7l")  # the ``uname -m`` of the machines the releases are published for


@host_operation(changes=(InstalledRelease,))
def installed(
    component: str,
    version: str,
    url: str = "",
    files: dict[str, str] | None = None,
    checksum_url: str | None = None,
    sha256: str | None = None,
    machines: dict[str, dict[str, Any]] | None = None,
    pending: str | None = None,
):
    """
    Download a release, verify its sha256, and install its files atomically (mode 0755).

    The expected checksum is ``sha256`` when given (a pin), else read from ``checksum_url`` (a ``sha256sum``
    style list such as a release's ``checksums.txt``, or a file holding just the hex digest). A mismatch stops
    the host with an error and installs nothing. The version installed is recorded, so a converged host
    downloads nothing.

    + component: the component, e.g. ``headscale`` (its installed version is recorded under this name)
    + version: the version being installed (recorded; a different one triggers the install)
    + url: the release file: a single binary, or a ``.tgz``/``.tar.gz`` archive
    + files: ``{source: destination}``: for an archive, the member path; for a single binary, ``""``
    + checksum_url: where the release's checksums are published
    + sha256: the expected checksum, instead of ``checksum_url``
    + machines: ``{uname -m: {"url": …, "checksum_url": …, "files": …}}``: the release of each machine
      architecture, instead of ``url``/``checksum_url``/``files`` (see ``for_machine``)
    + pending: a marker made once the release is verified, before its files go into place, for the service that
      runs them to be restarted even if this run stops first (see ``services.restarted``)

    **Example:**

    .. code:: python

        release.installed(
            name="Install headscale",
            component="headscale",
            version="0.29.2",
            url="https://github.com/juanfont/headscale/releases/download/v0.29.2/headscale_0.29.2_linux_amd64",
            checksum_url="https://github.com/juanfont/headscale/releases/download/v0.29.2/checksums.txt",
            files={"": "/usr/local/bin/headscale"},
        )
    """
    paths = check_arguments(url, files, checksum_url, sha256, machines)
    current = shared_fact(host, InstalledRelease, component=component, paths=paths)
    if current.get("version") == version:
        host.noop(f"{component} {version} is installed")
        return
    url, files, checksum_url = for_machine(component, url, files, checksum_url, machines)
    yield install_command(component, version, url, files, checksum_url, sha256, pending=pending)


def for_machine(
    component: str, url: str, files: dict[str, str] | None, checksum_url: str | None,
    machines: dict[str, dict[str, Any]] | None,
) -> tuple[str, dict[str, str], str | None]:
    """
    ``(url, files, checksum_url)`` for the host being deployed: with ``machines``, its architecture's entry.
    Called only when something is to be installed, so a converged host (and planning) reads no architecture;
    a machine with no entry is an ``OperationError`` naming the ones that have one.
    """
    if not machines:
        return url, files or {}, checksum_url
    machine = shared_fact(host, Arch, static=True)
    entry = machines.get(machine)
    if entry is None:
        raise OperationError(f"{component}: no release for this host's machine {machine!r} "
                             f"(published for: {', '.join(sorted(machines))})")
    return entry["url"], entry.get("files", files) or {}, entry.get("checksum_url", checksum_url)


def check_arguments(
    url: str, files: dict[str, str] | None, checksum_url: str | None, sha256: str | None,
    machines: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Raise ``OperationValueError`` for arguments ``installed`` cannot act on; return the installed paths."""
    if not machines:
        _check_one(url, files or {}, checksum_url, sha256)
        return list((files or {}).values())
    paths: list[str] | None = None
    for machine, entry in machines.items():
        unknown = sorted(set(entry) - {"url", "files", "checksum_url"})
        if unknown or not entry.get("url"):
            raise OperationValueError(f"machines[{machine!r}]: expected url and optionally files, checksum_url"
                                      f"{f' (unknown: {unknown})' if unknown else ''}")
        mine = entry.get("files", files) or {}
        _check_one(entry["url"], mine, entry.get("checksum_url", checksum_url), sha256)
        if paths is None:
            paths = list(mine.values())  # in the first entry's order (the InstalledRelease read's arguments)
        elif sorted(mine.values()) != sorted(paths):
            raise OperationValueError(f"machines[{machine!r}]: installs other files than the other machines")
    return paths or []


def _check_one(url: str, files: dict[str, str], checksum_url: str | None, sha256: str | None) -> None:
    if not url:
        raise OperationValueError("url: empty (give url, or machines)")
    if not files:
        raise OperationValueError("files: empty (expected {source: destination})")
    if sha256 is not None and not _SHA256.match(sha256):
        raise OperationValueError(f"sha256: {sha256!r} (expected 64 lower-case hex digits)")
    if sha256 is None and not checksum_url:
        raise OperationValueError("give checksum_url or sha256: a release is never installed unverified")
    if not url.endswith((".tgz", ".tar.gz")) and list(files) != [""]:
        raise OperationValueError('files: a single-binary download installs one file: {"": destination}')


def install_command(
    component: str,
    version: str,
    url: str,
    files: dict[str, str],
    checksum_url: str | None = None,
    sha256: str | None = None,
    record: bool = True,
    pending: str | None = None,
) -> StringCommand:
    """The one remote command of ``installed``: download, verify, mark ``pending``, install atomically, record the
    version (``record=False``: leave that to ``record_command``, once the caller has checked the new version
    works)."""
    archive = url.endswith((".tgz", ".tar.gz"))
    filename = posixpath.basename(url)
    expected: list[object]
    if sha256:
        expected = ["expected=" + sha256, ";"]
    else:
        expected = [
            "expected=$(curl -fsSL --retry 3", QuoteString(checksum_url or ""),
            "| awk -v f=" + filename, "'NF == 1 || $2 == f || $2 == \"*\" f {print $1; exit}');",
        ]
    install: list[object] = []
    for source, dest in files.items():
        src = '"$tmp/dl"' if not archive else f'"$tmp/x/{source}"'
        install += [
            "install -D -m 0755", src, QuoteString(dest + ".portable-k3s-new"), "&&",
            "mv -f", QuoteString(dest + ".portable-k3s-new"), QuoteString(dest), "&&",
        ]
    return StringCommand(
        "set -e;",
        "tmp=$(mktemp -d /tmp/portable-k3s-release.XXXXXX); trap 'rm -rf \"$tmp\"' EXIT;",
        "curl -fsSL --retry 3 -o \"$tmp/dl\"", QuoteString(url), ";",
        *expected,
        "actual=$(sha256sum \"$tmp/dl\" | cut -d' ' -f1);",
        f'if [ -z "$expected" ] || [ "$expected" != "$actual" ]; then echo "{component}: sha256 of {filename} is',
        '$actual, expected ${expected:-nothing (no checksum found)}; nothing was installed" >&2; exit 1; fi;',
        *(["mkdir \"$tmp/x\" && tar -xzf \"$tmp/dl\" -C \"$tmp/x\" &&"] if archive else []),
        *marked(pending),
        *(install if record else install[:-1]),
        *(["mkdir -p", RELEASE_STATE_DIR, "&&", f'echo "{version} $actual" >',
           QuoteString(f"{RELEASE_STATE_DIR}/{component}")] if record else []),
    )


def record_command(component: str, version: str, path: str) -> StringCommand:
    """Record ``version`` of ``component`` as installed (with ``path``'s sha256), as ``installed`` does."""
    return StringCommand(
        "mkdir -p", RELEASE_STATE_DIR, "&& echo", QuoteString(version), "$(sha256sum", QuoteString(path),
        "| cut -d' ' -f1) >", QuoteString(f"{RELEASE_STATE_DIR}/{component}"),
    )
