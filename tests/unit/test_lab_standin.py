"""The lab's k3s stand-in source: it embeds the Kubernetes of the pinned k3s, and its build is keyed by its source."""

from __future__ import annotations

import shutil
from pathlib import Path

from portable_k3s.lab import artifacts
from portable_k3s.versions import VERSIONS


def test_the_stand_in_embeds_the_kubernetes_of_the_pinned_k3s():
    # k3s v1.35.3+k3s1 is built from github.com/k3s-io/kubernetes v1.35.3-k3s1: a new k3s pin needs go.mod to follow.
    assert artifacts.kubernetes_fork_version() == VERSIONS["k3s"].replace("+", "-")


def test_every_staging_module_is_replaced_by_one_version():
    """Each k8s.io staging module comes from the fork at its version, or (where the proxy refuses the fork's) from
    upstream at the same Kubernetes minor: a mix of minors would not build the same Kubernetes."""
    fork = artifacts.kubernetes_fork_version()
    upstream = "v0." + fork.split(".", 1)[1].split("-", 1)[0]  # v1.35.3-k3s1 -> v0.35.3
    replaced = {}
    for line in (artifacts.SUPERVISOR_SOURCE / "go.mod").read_text().splitlines():
        words = line.split()
        if len(words) == 4 and words[1] == "=>" and words[0].startswith("k8s.io/"):
            replaced[words[0]] = (words[2], words[3])
    assert len(replaced) == 32, sorted(replaced)  # k8s.io/kubernetes and its 31 staging modules
    for module, (target, version) in replaced.items():
        if target.startswith(artifacts.KUBERNETES_FORK):
            assert version == fork, module
        else:
            assert (target, version) == (module, upstream), module


def test_the_build_is_keyed_by_every_source_file(tmp_path: Path):
    source = tmp_path / "src"
    shutil.copytree(artifacts.SUPERVISOR_SOURCE, source)
    before = artifacts._source_hash(source)
    assert artifacts._source_hash(source) == before
    (source / "main.go").write_text((source / "main.go").read_text() + "\n// changed\n")
    changed = artifacts._source_hash(source)
    assert changed != before
    manifest = source / "manifests" / "coredns.yaml"  # embedded in the binary
    manifest.write_text(manifest.read_text() + "\n")
    assert artifacts._source_hash(source) != changed
