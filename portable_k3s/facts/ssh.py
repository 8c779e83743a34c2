"""Facts about the SSH server, gathered in one remote command."""

from __future__ import annotations

from typing import TypedDict

from pyinfra.api import FactBase, StringCommand

from .util import checksum, first_lines, next_section, sections, sha256_of

SSHD_DROPIN_DIR = "/etc/ssh/sshd_config.d"


class SshdHardeningInfo(TypedDict):
    dropin_sha256: str | None
    includes_dropins: bool
    login_user: str
    authorized_keys: int


class SshdHardening(FactBase[SshdHardeningInfo]):
    """
    Returns what hardening sshd needs to know about a host, in one command: the checksum of the hardening
    drop-in (``None`` when absent), whether ``sshd_config`` includes ``sshd_config.d/*.conf``, the user this
    deploy logs in as, and how many keys that user has in ``~/.ssh/authorized_keys{,2}``.

    .. code:: python

        {"dropin_sha256": "3f1c…", "includes_dropins": True, "login_user": "root", "authorized_keys": 1}
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    @staticmethod
    def default() -> SshdHardeningInfo:  # no output at all: nothing there yet
        return {"dropin_sha256": None, "includes_dropins": False, "login_user": "", "authorized_keys": 0}

    def command(self, path: str) -> StringCommand:
        return StringCommand(
            sha256_of(path),
            next_section(),
            r"grep -Eiq '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/\*\.conf' /etc/ssh/sshd_config"
            " && echo yes || echo no;",
            next_section(),
            'u="${SUDO_USER:-$(id -un)}"; echo "$u";',
            next_section(),
            'h="$(getent passwd "$u")"; h="${h%:*}"; h="${h##*:}";',  # the home directory, 6th of 7 fields
            # A count per file that exists (grep without cat: one program run)
            "grep -Ehc '^[[:space:]]*[^#[:space:]]' \"$h/.ssh/authorized_keys\" \"$h/.ssh/authorized_keys2\""
            " 2>/dev/null || true",
        )

    def process(self, output: list[str]) -> SshdHardeningInfo:
        sha, include, user = first_lines(output, 3)
        keys = sections(output, 4)[3]
        return {
            "dropin_sha256": checksum(sha),
            "includes_dropins": include == "yes",
            "login_user": user,
            "authorized_keys": sum(int(count) for count in keys if count.isdigit()),
        }
