"""Facts about the cluster add-ons' manifests in k3s's auto-deploy directory."""

from __future__ import annotations

from typing import TypedDict

from pyinfra.api import FactBase, QuoteString, StringCommand

REMOVING = ".removing.yaml"  # a manifest being removed: a dotfile, so k3s's deploy controller skips it


class ManifestFileList(TypedDict):
    files: list[str]
    removing: list[str]


class ManifestFiles(FactBase[ManifestFileList]):
    """
    Returns the manifest files whose names start with ``prefix`` in ``directory``, and those whose removal
    started but did not finish (renamed to ``.<name>.removing.yaml``, listed by their original name).

    .. code:: python

        {"files": ["portable-k3s-cert-manager.yaml", "portable-k3s-app-blog.yaml"],
         "removing": ["portable-k3s-app-kutt.yaml"]}
    """

    @staticmethod
    def default() -> ManifestFileList:
        return {"files": [], "removing": []}

    def command(self, directory: str, prefix: str) -> StringCommand:
        return StringCommand(
            "cd", QuoteString(directory), "2>/dev/null && for f in", f"{prefix}*.yaml", f".{prefix}*{REMOVING}",
            '; do [ -f "$f" ] && echo "$f"; done; true',
        )

    def process(self, output: list[str]) -> ManifestFileList:
        found = self.default()
        for line in (line.strip() for line in output):
            if line.startswith(".") and line.endswith(REMOVING):
                found["removing"].append(line[1:-len(REMOVING)] + ".yaml")
            elif line and not line.startswith("."):
                found["files"].append(line)
        found["files"].sort()
        found["removing"].sort()
        return found
