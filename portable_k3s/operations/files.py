"""Files whose whole content the deploy owns, written only when they differ."""

from __future__ import annotations

import posixpath
from io import StringIO

from pyinfra import host
from pyinfra.api import OperationValueError, QuoteString, StringCommand
from pyinfra.api.command import FileUploadCommand

from ..facts.files import FileStates
from ..render import sha256
from .util import host_operation, shared_fact


@host_operation(changes=(FileStates,))
def content(
    path: str,
    text: str,
    mode: str = "0644",
    user: str = "root",
    group: str = "root",
    validate: str | None = None,
    batch: tuple[str, ...] | None = None,
    test_in_place: str | None = None,
    pending: str | None = None,
):
    """
    Make ``path`` hold exactly ``text`` with this mode and owner. A new version is staged next to the file,
    given its mode and owner first (so a secret is never readable by others, not even briefly), optionally
    validated, then moved into place atomically. The content is never printed (not even with ``--diff``),
    so this is also how secrets are written.

    + path: the file
    + text: its whole content
    + mode, user, group: its permissions and owner
    + validate: a command run before the move, ``{}`` standing for the staged file; failing keeps the old file
    + batch: all paths of the component: their states are read in one remote command, shared by these ops
    + test_in_place: a command run once the new file is in place (for tools that test their whole config, like
      ``nginx -t``); failing puts the previous file back (or removes the new one) and fails the operation
    + pending: a marker file made before the new file goes into place, for the service that reads it to be
      restarted even if this run stops first (see ``services.restarted``'s ``pending``)

    **Example:**

    .. code:: python

        files.content(
            name="headscale config", path="/etc/headscale/config.yaml", text=config,
            mode="0640", group="headscale", validate="headscale configtest -c {}",
        )
    """
    if len(mode) not in (3, 4) or any(c not in "01234567" for c in mode):
        raise OperationValueError(f"mode: {mode!r} (expected an octal mode like 0644)")
    paths = batch or (path,)
    if path not in paths:
        raise OperationValueError(f"batch: does not include {path}")
    current = shared_fact(host, FileStates, paths=paths).get(path)
    wanted = {"sha256": sha256(text), "mode": mode.lstrip("0") or "0", "user": user, "group": group}
    if current == wanted:
        host.noop(f"{path} is up to date")
        return
    # Hidden, with the same extension: tools that check the extension accept it, globs like *.conf skip it.
    directory_name, base = posixpath.split(path)
    stem, dot, ext = base.rpartition(".") if "." in base.lstrip(".") else (base, "", "")
    staged = posixpath.join(directory_name, f".{stem}.portable-k3s-new{dot}{ext}")
    quoted, q_staged = QuoteString(path), QuoteString(staged)
    directory = QuoteString(posixpath.dirname(path) or ".")
    if current is not None and current["sha256"] == wanted["sha256"]:
        yield StringCommand("chmod", mode, quoted, "&& chown", f"{user}:{group}", quoted)
        return
    # An empty file with the final permissions first; the upload then writes into it.
    yield StringCommand(
        "mkdir -p", directory, "&& rm -f", q_staged, "&& install -m", mode, "-o", user, "-g", group, "/dev/null",
        q_staged,
    )
    yield FileUploadCommand(StringIO(text), staged)
    check: list[object] = []
    if validate:
        before, _, after = validate.partition("{}")
        check = [
            "if ! {", StringCommand(before.strip(), q_staged, after.strip()) if _ else validate, "; }; then rm -f",
            q_staged, f"; echo 'validation of {path} failed; the previous file is still in place' >&2; exit 1; fi;",
        ]
    yield StringCommand(*check, *marked(pending), *swap_in(path, staged, test_in_place))


@host_operation(changes=(FileStates,))
def absent(path: str, batch: tuple[str, ...] | None = None):
    """
    Remove ``path`` if it exists.

    + path: the file
    + batch: all paths of the component: their states are read in one remote command (see ``content``)

    **Example:**

    .. code:: python

        files.absent(name="No ntfy token", path="/etc/portable-k3s/ntfy-auth")
    """
    paths = batch or (path,)
    if path not in paths:
        raise OperationValueError(f"batch: does not include {path}")
    if shared_fact(host, FileStates, paths=paths).get(path) is None:
        host.noop(f"{path} does not exist")
        return
    yield StringCommand("rm -f", QuoteString(path))


def marked(pending: str | None) -> list[object]:
    """Shell words that make the ``pending`` marker, then ``&&`` (none without a marker)."""
    if not pending:
        return []
    return ["mkdir -p", QuoteString(posixpath.dirname(pending)), "&& touch", QuoteString(pending), "&&"]


def swap_in(path: str, staged: str, test_in_place: str | None = None) -> list[object]:
    """Shell words that move ``staged`` over ``path``; with ``test_in_place``, test it there and put the previous
    file back (or remove the new one) when the test fails."""
    quoted, q_staged = QuoteString(path), QuoteString(staged)
    if not test_in_place:
        return ["mv -f", q_staged, quoted]
    backup = QuoteString(f"{staged}.previous")
    return [
        "rm -f", backup, "; if [ -e", quoted, "]; then cp -p", quoted, backup, "; fi; mv -f", q_staged, quoted, ";",
        "if ! {", test_in_place, "; }; then if [ -e", backup, "]; then mv -f", backup, quoted, "; else rm -f",
        quoted, f"; fi; echo '{path} was refused by: {test_in_place}; the previous one is still in place' >&2;",
        "exit 1; fi; rm -f", backup,
    ]
