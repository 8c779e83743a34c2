"""Facts about the SSH server, gathered in one remote command."""

from __future__ import annotations

from typing import TypedDict

from pyinfra.api import FactBase, StringCommand

from .util import first_lines, next_section, sections

SSHD_DROPIN_DIR = "/etc/ssh/sshd_config.d"


class SshdHardeningInfo(TypedDict):
    includes_dropins: bool
    login_user: str
    authorized_keys: int


class SshdHardening(FactBase[SshdHardeningInfo]):
    """
    Returns what hardening sshd needs to know about a host, in one command: whether ``sshd_config`` includes
    ``sshd_config.d/*.conf``, the user this deploy logs in as, and how many keys that user has in
    ``~/.ssh/authorized_keys{,2}``. (The hardening drop-in's checksum is ``files.FileStates``'.)

    .. code:: python

        {"includes_dropins": True, "login_user": "root", "authorized_keys": 1}
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    @staticmethod
    def default() -> SshdHardeningInfo:  # no output at all: nothing there yet
        return {"includes_dropins": False, "login_user": "", "authorized_keys": 0}

    def command(self) -> StringCommand:
        return StringCommand(
            r"grep -Eiq '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/\*\.conf' /etc/ssh/sshd_config"
            " && echo yes || echo no;",
            next_section(),
            'u="${SUDO_USER:-$(id -un)}"; echo "$u";',
            next_section(),
            # The home directory: $HOME unless sudo changed the user (then the 6th of the 7 passwd fields)
            'h=; [ -z "$SUDO_USER" ] && h="$HOME";',
            '[ -n "$h" ] || { h="$(getent passwd "$u")"; h="${h%:*}"; h="${h##*:}"; };',
            # A count per file that exists (grep without cat: one program run)
            "grep -Ehc '^[[:space:]]*[^#[:space:]]' \"$h/.ssh/authorized_keys\" \"$h/.ssh/authorized_keys2\""
            " 2>/dev/null || true",
        )

    def process(self, output: list[str]) -> SshdHardeningInfo:
        include, user = first_lines(output, 2)
        keys = sections(output, 3)[2]
        return {
            "includes_dropins": include == "yes",
            "login_user": user,
            "authorized_keys": sum(int(count) for count in keys if count.isdigit()),
        }
