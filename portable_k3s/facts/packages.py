"""Facts about Debian packages."""

from __future__ import annotations

from pyinfra.api import FactBase


class InstalledPackages(FactBase[dict[str, str]]):
    """
    Returns the installed Debian packages and their versions, in one ``dpkg-query`` (the short list pyinfra's
    ``DebPackages`` takes from ``dpkg -l``, without its columns and descriptions). Installed means what
    ``dpkg -l`` shows as ``ii`` or ``hi`` (held); a removed package whose config files remain is not.

    .. code:: python

        {"curl": "7.88.1-10+deb12u8", "jq": "1.6-2.1"}
    """

    needs_subshell = False  # its command leaves no cd, exit or variable that matters: no subshell in a prefetch

    @staticmethod
    def requires_command() -> str:
        return "dpkg-query"

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def command(self) -> str:
        return "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n'"

    def process(self, output: list[str]) -> dict[str, str]:
        installed: dict[str, str] = {}
        for line in output:
            fields = line.split()
            if len(fields) == 3 and fields[0][:2] in ("ii", "hi"):
                installed[fields[1]] = fields[2]
        return installed
