"""Install release binaries from a download URL, verified by sha256 before anything is installed."""

from __future__ import annotations

import posixpath
import re

from pyinfra import host
from pyinfra.api import OperationValueError, QuoteString, StringCommand, operation

from ..facts.release import RELEASE_STATE_DIR, InstalledRelease
from .util import forget, shared_fact

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@operation()
def installed(
    component: str,
    version: str,
    url: str,
    files: dict[str, str],
    checksum_url: str | None = None,
    sha256: str | None = None,
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
    check_arguments(url, files, checksum_url, sha256)
    current = shared_fact(host, InstalledRelease, component=component, paths=list(files.values()))
    if current.get("version") == version:
        host.noop(f"{component} {version} is installed")
        return
    forget(host, InstalledRelease)
    yield install_command(component, version, url, files, checksum_url, sha256)


def check_arguments(url: str, files: dict[str, str], checksum_url: str | None, sha256: str | None) -> None:
    """Raise ``OperationValueError`` for arguments ``installed`` cannot act on."""
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
) -> StringCommand:
    """The one remote command of ``installed``: download, verify, install atomically, record the version
    (``record=False``: leave that to ``record_command``, once the caller has checked the new version works)."""
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
