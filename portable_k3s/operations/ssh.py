"""Operations on the SSH server."""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import OperationError, OperationValueError, QuoteString, StringCommand
from pyinfra.api.command import FileUploadCommand

from ..facts.files import FileStates
from ..facts.ssh import SSHD_DROPIN_DIR, SshdHardening
from ..render import render, sha256
from .util import file_checksum, host_operation, shared_fact

HARDENING_DROPIN = f"{SSHD_DROPIN_DIR}/01-portable-k3s-hardening.conf"
PERMIT_ROOT_LOGIN = ("prohibit-password", "no")


@host_operation(changes=(FileStates,))
def hardened(permit_root_login: str = "prohibit-password", path: str = HARDENING_DROPIN, present: bool = True):
    """
    Harden sshd: public keys only (no password or keyboard-interactive login), root by key only or not at all.

    The drop-in is tested with ``sshd -t`` before sshd is reloaded; a config that fails the test is removed
    again and the previous one keeps serving. sshd is reloaded only when the drop-in changed. The operation
    refuses to run when the change would lock out the user the deploy logs in as.

    + permit_root_login: ``prohibit-password`` (root by key only) or ``no``
    + path: the drop-in file (must sort before other drop-ins; sshd keeps the first value it reads)
    + present: ``False`` removes the drop-in again (tested with ``sshd -t``, then sshd is reloaded)

    **Example:**

    .. code:: python

        ssh.hardened(name="Harden sshd", permit_root_login="prohibit-password")
    """
    if permit_root_login not in PERMIT_ROOT_LOGIN:
        raise OperationValueError(
            f"permit_root_login: {permit_root_login!r} (expected one of {', '.join(PERMIT_ROOT_LOGIN)})"
        )
    current = file_checksum(host, path)
    if not present:
        if current is None:
            host.noop("sshd hardening is absent")
            return
        yield StringCommand(
            "rm -f", QuoteString(path), "&& sshd -t && systemctl try-reload-or-restart ssh.service"
        )
        return
    content = render("sshd_hardening.conf.j2", permit_root_login=permit_root_login)
    if current == sha256(content):
        host.noop("sshd hardening is in place")
        return
    info = shared_fact(host, SshdHardening)  # only now: a converged host needs no more than the checksum
    if not info["includes_dropins"]:
        raise OperationError(
            f"/etc/ssh/sshd_config does not include {SSHD_DROPIN_DIR}/*.conf, so the hardening would not apply "
            "(expected OpenSSH >= 8.2 with Debian's default 'Include /etc/ssh/sshd_config.d/*.conf')"
        )
    user = info["login_user"]
    if info["authorized_keys"] < 1:
        raise OperationError(
            f"refusing to disable password login: the deploying user {user!r} has no key in "
            f"~{user}/.ssh/authorized_keys and would be locked out (add your public key there first)"
        )
    if user == "root" and permit_root_login == "no":
        raise OperationError(
            "ssh_permit_root_login: 'no' would lock out this deploy, which logs in as root "
            "(expected 'prohibit-password', or deploy as a sudo user with ssh_user)"
        )
    staged = f"{path}.portable-k3s-new"
    yield FileUploadCommand(StringIO(content), staged)
    quoted, backup = QuoteString(path), QuoteString(f"{path}.portable-k3s-old")
    yield StringCommand(
        "set -e;",
        "if [ -e", quoted, "]; then cp -p", quoted, backup, "; fi;",
        "install -m 0644", QuoteString(staged), quoted, "; rm -f", QuoteString(staged), ";",
        "if ! sshd -t; then",
        "if [ -e", backup, "]; then mv -f", backup, quoted, "; else rm -f", quoted, "; fi;",
        "echo 'sshd -t rejected the new config; the previous one is still active' >&2; exit 1;",
        "fi;",
        "rm -f", backup, ";",
        "systemctl try-reload-or-restart ssh.service",
    )
