"""pyinfra-testing cases for ``portable_k3s.operations``: one test per file in
``operations/<module>.<operation>/``.

A case gives the operation's arguments, the facts it reads and the exact commands it yields (or its noop
text, or the exception it raises). Fact keys are ``<last module segment>.<FactClass>``, the same spelling
for our facts (``ssh.SshdHardening``, ``timesync.Timesyncd``) and pyinfra's (``deb.DebPackages``,
``files.File``, ``server.Date``); a fact read with arguments is keyed by its argument string under that,
e.g. ``path=/etc/ssh/sshd_config.d/01-portable-k3s-hardening.conf``.
"""

from __future__ import annotations

import grp
import hashlib
import importlib
import inspect
import io
import os
import pkgutil
import pwd
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.operations import make_operation_tests
from pyinfra_testing.util import FakeState, create_host

import portable_k3s.operations as operations_pkg

BASE_IMPORT_PATH = "portable_k3s.operations"
TESTS_BASE = Path(__file__).parent / "operations"

for op_path in sorted(d.name for d in TESTS_BASE.iterdir() if d.is_dir()):
    locals()[op_path] = make_operation_tests(BASE_IMPORT_PATH, op_path, TESTS_BASE / op_path)


def test_every_operation_has_cases() -> None:
    """Each @operation of the package has a case directory with at least one case file."""
    expected = set()
    for module_info in pkgutil.iter_modules(operations_pkg.__path__):
        module = importlib.import_module(f"{BASE_IMPORT_PATH}.{module_info.name}")
        for name, func in inspect.getmembers(module, callable):
            if (hasattr(func, "_inner") and getattr(func, "__module__", None) == module.__name__
                    and not name.startswith("_")):  # a private one is tested through its public caller
                expected.add(f"{module_info.name}.{name}")
    assert expected, "no operations found"
    with_cases = {d.name for d in TESTS_BASE.iterdir() if d.is_dir() and any(d.glob("*.yaml"))}
    assert expected <= with_cases, f"operations without cases: {sorted(expected - with_cases)}"


def _run_operation(op, facts: dict, **kwargs) -> list:
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra_testing.util import FakeState, create_host

    state = FakeState()
    host = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(host):
        return list(op._inner(**kwargs))


def test_hardened_upload_goes_through_a_location_a_sudo_login_user_can_write() -> None:
    from pyinfra.connectors.ssh import SSHConnector
    from pyinfra.connectors.util import CommandOutput

    from portable_k3s.operations import ssh

    facts = {
        "ssh.SshdHardening": {"includes_dropins": True, "login_user": "admin", "authorized_keys": 1},
        "files.FileStates": {f"paths=('{ssh.HARDENING_DROPIN}',)": {}},
    }
    upload = _run_operation(ssh.hardened, facts)[0]

    # What pyinfra's SSH connector does with this upload for a sudo deploy (no network involved).
    connector = SSHConnector.__new__(SSHConnector)
    connector.host = mock.Mock(get_temp_filename=lambda *_a, **_k: "/tmp/pyinfra-0123")
    sftp_targets: list[str] = []
    with (
        mock.patch.object(SSHConnector, "_put_file", lambda self, src, dest: sftp_targets.append(dest)),
        mock.patch.object(SSHConnector, "run_shell_command", return_value=(True, CommandOutput([]))),
    ):
        connector.put_file(upload.src, upload.dest, remote_temp_filename=upload.remote_temp_filename, _sudo=True)
    assert len(sftp_targets) == 1
    assert not sftp_targets[0].startswith("/etc/"), sftp_targets[0]


def test_timesyncd_quotes_the_drop_in_directory() -> None:
    from portable_k3s.operations import timesync

    path = "/etc/systemd/timesyncd.conf.d/site a/portable-k3s.conf"
    facts = {
        "timesync.Timesyncd": {"container": None},
        "files.FileStates": {f"paths=('{path}',)": {}},
        "services.ServiceStates": {
            "units=('systemd-timesyncd.service',)": {
                "systemd-timesyncd.service": {"active": True, "enabled": "enabled"},
            },
        },
    }
    first = _run_operation(timesync.timesyncd, facts, servers=["ntp.example"], path=path)[0]
    text = first if isinstance(first, str) else first.get_raw_value()
    assert text == "mkdir -p '/etc/systemd/timesyncd.conf.d/site a'"


# files.content and release.installed, executed by a local shell in a temporary directory: the commands do
# what the case files say they look like.

needs_shell_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("sh", "stat", "sha256sum", "install", "curl", "tar", "awk")),
    reason="needs sh, coreutils, curl, tar and awk",
)


def _local_owner() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def _sh(command: Any) -> subprocess.CompletedProcess:
    text = command if isinstance(command, str) else command.get_raw_value()
    return subprocess.run(["sh", "-c", text], capture_output=True, text=True, check=False)


def _file_states(paths: tuple[str, ...]) -> dict:
    """The FileStates fact, gathered by running its command locally."""
    from portable_k3s.facts.files import FileStates

    result = _sh(FileStates().command(paths))
    assert result.returncode == 0, result.stderr
    return FileStates().process(result.stdout.splitlines())


def _apply(commands: list) -> subprocess.CompletedProcess | None:
    """Run commands as a connector would; an upload writes into the existing staged file, keeping its mode."""
    from pyinfra.api.command import FileUploadCommand

    last = None
    for command in commands:
        if isinstance(command, FileUploadCommand):
            assert isinstance(command.src, io.StringIO)
            with open(command.dest, "w") as staged:
                staged.write(command.src.getvalue())
            continue
        last = _sh(command)
        if last.returncode != 0:
            return last
    return last


def _content(path: str, text: str, **kwargs: Any) -> tuple[list, Any]:
    from portable_k3s.operations import files

    user, group = _local_owner()
    paths = kwargs.get("batch") or (path,)
    facts = {"files.FileStates": {f"paths={paths!r}": _file_states(paths)}}
    state = FakeState()
    host = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(host):
        commands = list(files.content._inner(path=path, text=text, user=user, group=group, **kwargs))
    return commands, host


@needs_shell_tools
def test_content_writes_validates_and_then_is_a_noop(tmp_path: Path) -> None:
    path = str(tmp_path / "etc dir" / "config.yaml")
    text = "server_url: https://hs.example.org\n"
    commands, _ = _content(path, text, mode="0640", validate="grep -q '^server_url:' {}")
    result = _apply(commands)
    assert result is not None and result.returncode == 0, result
    assert Path(path).read_text() == text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert sorted(p.name for p in Path(path).parent.iterdir()) == ["config.yaml"]  # no staged file left

    # Converged: the fact read from the real file makes the operation a no-op.
    commands, host = _content(path, text, mode="0640", validate="grep -q '^server_url:' {}")
    assert commands == []
    assert host.noop_description == f"{path} is up to date"

    # Only the mode changed: fixed in place.
    commands, _ = _content(path, text, mode="0600")
    assert len(commands) == 1 and commands[0].get_raw_value().startswith("chmod 0600 ")
    result = _apply(commands)
    assert result is not None and result.returncode == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert _content(path, text, mode="0600")[0] == []


@needs_shell_tools
def test_content_failed_validation_keeps_the_previous_file(tmp_path: Path) -> None:
    path = str(tmp_path / "config.yaml")
    Path(path).write_text("server_url: https://old.example.org\n")
    commands, _ = _content(path, "not: valid\n", validate="grep -q '^server_url:' {}")
    result = _apply(commands)
    assert result is not None and result.returncode == 1
    assert f"validation of {path} failed; the previous file is still in place" in result.stderr
    assert Path(path).read_text() == "server_url: https://old.example.org\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@needs_shell_tools
@pytest.mark.parametrize(
    ("guard", "text", "installed"),
    [
        pytest.param("true", "server_url: https://new.example.org\n", True, id="checked-valid"),
        pytest.param("true", "not: valid\n", False, id="checked-invalid"),
        pytest.param("false", "not: valid\n", True, id="check-skipped"),
    ],
)
def test_content_compound_validate_is_one_check(tmp_path: Path, guard: str, text: str, installed: bool) -> None:
    """Like the policy check, skipped while headscale is not running: '! running || check {} >/dev/null'."""
    path = str(tmp_path / "policy.hujson")
    Path(path).write_text("server_url: https://old.example.org\n")
    commands, _ = _content(path, text, validate=f"! {guard} || grep -q '^server_url:' {{}} >/dev/null")
    result = _apply(commands)
    assert result is not None and result.returncode == (0 if installed else 1), result
    assert Path(path).read_text() == (text if installed else "server_url: https://old.example.org\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.hujson"]


def test_content_refuses_a_mode_that_is_not_octal() -> None:
    from pyinfra.api import OperationValueError

    from portable_k3s.operations import files

    facts: dict = {"files.FileStates": {"paths=('/etc/default/tailscaled',)": {}}}
    with pytest.raises(OperationValueError):
        _run_operation(files.content, facts, path="/etc/default/tailscaled", text="", mode="0698")


def _release_fixture(tmp_path: Path) -> dict[str, Any]:
    """A release directory: a single binary, a tarball with two members, and their published checksums."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    binary = downloads / "headscale_0.29.2_linux_amd64"
    binary.write_bytes(b"#!/bin/sh\necho headscale\n")
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    (downloads / "checksums.txt").write_text(
        f"{'1' * 64}  headscale_0.29.2_linux_arm64\n{digest}  headscale_0.29.2_linux_amd64\n"
    )
    archive = downloads / "tailscale_1.98.10_amd64.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("tailscale", "tailscaled"):
            data = f"#!/bin/sh\necho {name}\n".encode()
            info = tarfile.TarInfo(f"tailscale_1.98.10_amd64/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    # tailscale publishes the bare digest, without a newline
    (downloads / "tailscale_1.98.10_amd64.tgz.sha256").write_text(hashlib.sha256(archive.read_bytes()).hexdigest())
    return {"dir": downloads, "binary": binary, "digest": digest, "archive": archive}


def _install_release(monkeypatch: pytest.MonkeyPatch, state_dir: Path, **kwargs: Any) -> subprocess.CompletedProcess:
    from portable_k3s.operations import release

    monkeypatch.setattr(release, "RELEASE_STATE_DIR", str(state_dir))
    key = f"component={kwargs['component']}, paths={list(kwargs['files'].values())!r}"
    (command,) = _run_operation(release.installed, {"release.InstalledRelease": {key: {}}}, **kwargs)
    return _sh(command)


@needs_shell_tools
def test_release_single_binary_verified_by_checksums_txt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = _release_fixture(tmp_path)
    dest = tmp_path / "bin" / "headscale"
    result = _install_release(
        monkeypatch,
        tmp_path / "state",
        component="headscale",
        version="0.29.2",
        url=f"file://{fixture['binary']}",
        checksum_url=f"file://{fixture['dir']}/checksums.txt",
        files={"": str(dest)},
    )
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == fixture["binary"].read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["headscale"]
    # What the InstalledRelease fact reads back.
    assert (tmp_path / "state" / "headscale").read_text() == f"0.29.2 {fixture['digest']}\n"


@needs_shell_tools
@pytest.mark.parametrize("published", ["other", "missing"])
def test_release_checksum_mismatch_installs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, published: str
) -> None:
    fixture = _release_fixture(tmp_path)
    checksums = fixture["dir"] / "checksums.txt"
    if published == "other":
        checksums.write_text(f"{'0' * 64}  headscale_0.29.2_linux_amd64\n")
    else:
        checksums.unlink()
    dest = tmp_path / "bin" / "headscale"
    result = _install_release(
        monkeypatch,
        tmp_path / "state",
        component="headscale",
        version="0.29.2",
        url=f"file://{fixture['binary']}",
        checksum_url=f"file://{checksums}",
        files={"": str(dest)},
    )
    assert result.returncode == 1
    expected = "0" * 64 if published == "other" else "nothing (no checksum found)"
    assert (
        f"headscale: sha256 of headscale_0.29.2_linux_amd64 is {fixture['digest']}, expected {expected}; "
        "nothing was installed"
    ) in result.stderr
    assert not dest.parent.exists()
    assert not (tmp_path / "state").exists()


@needs_shell_tools
def test_release_pinned_sha256_mismatch_installs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = _release_fixture(tmp_path)
    dest = tmp_path / "bin" / "headscale"
    result = _install_release(
        monkeypatch,
        tmp_path / "state",
        component="headscale",
        version="0.29.2",
        url=f"file://{fixture['binary']}",
        sha256="f" * 64,
        files={"": str(dest)},
    )
    assert result.returncode == 1
    assert f"expected {'f' * 64}; nothing was installed" in result.stderr
    assert not dest.parent.exists()


@needs_shell_tools
def test_release_tarball_members_verified_by_a_bare_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = _release_fixture(tmp_path)
    archive = fixture["archive"]
    bin_dir, sbin_dir = tmp_path / "bin", tmp_path / "sbin dir"
    result = _install_release(
        monkeypatch,
        tmp_path / "state",
        component="tailscale",
        version="1.98.10",
        url=f"file://{archive}",
        checksum_url=f"file://{archive}.sha256",
        files={
            "tailscale_1.98.10_amd64/tailscale": str(bin_dir / "tailscale"),
            "tailscale_1.98.10_amd64/tailscaled": str(sbin_dir / "tailscaled"),
        },
    )
    assert result.returncode == 0, result.stderr
    assert (bin_dir / "tailscale").read_text() == "#!/bin/sh\necho tailscale\n"
    assert (sbin_dir / "tailscaled").read_text() == "#!/bin/sh\necho tailscaled\n"
    assert stat.S_IMODE((sbin_dir / "tailscaled").stat().st_mode) == 0o755
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (tmp_path / "state" / "tailscale").read_text() == f"1.98.10 {digest}\n"


def _on_machine(monkeypatch: pytest.MonkeyPatch, machine: str) -> None:
    """The host's ``uname -m`` as ``release`` reads it (pyinfra_testing wraps facts in a type that is unhashable)."""
    from pyinfra.facts.server import Arch

    from portable_k3s.operations import release

    real = release.shared_fact
    monkeypatch.setattr(
        release, "shared_fact", lambda host, fact, **kw: machine if fact is Arch else real(host, fact, **kw)
    )


def _machines(base: str) -> dict:
    return {
        machine: {"url": f"{base}/headscale_linux_{arch}", "checksum_url": f"{base}/checksums.txt"}
        for machine, arch in (("x86_64", "amd64"), ("aarch64", "arm64"))
    }


@pytest.mark.parametrize(("machine", "arch"), [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_release_machines_installs_the_hosts_architecture(
    machine: str, arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The architecture is read only when something is to be installed (a converged host reads none)."""
    from portable_k3s.operations import release

    _on_machine(monkeypatch, machine)
    key = "component=headscale, paths=['/usr/local/bin/headscale']"
    facts = {"release.InstalledRelease": {key: {}}}
    (command,) = _run_operation(release.installed, facts, component="headscale", version="0.29.2",
                                files={"": "/usr/local/bin/headscale"}, machines=_machines("https://r"))
    assert f"https://r/headscale_linux_{arch}" in command.get_raw_value()
    converged = {"release.InstalledRelease": {key: {"version": "0.29.2", "sha256": "0" * 64}}}
    assert _run_operation(release.installed, converged, component="headscale", version="0.29.2",
                          files={"": "/usr/local/bin/headscale"}, machines=_machines("https://r")) == []


def test_release_machines_names_the_published_ones_for_another_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyinfra.api import OperationError

    from portable_k3s.operations import release

    _on_machine(monkeypatch, "riscv64")
    key = "component=headscale, paths=['/usr/local/bin/headscale']"
    facts = {"release.InstalledRelease": {key: {}}}
    with pytest.raises(OperationError, match=r"machine 'riscv64' \(published for: aarch64, x86_64\)"):
        _run_operation(release.installed, facts, component="headscale", version="0.29.2",
                       files={"": "/usr/local/bin/headscale"}, machines=_machines("https://r"))


@pytest.mark.parametrize(("machines", "error"), [
    ({"x86_64": {"url": "https://r/a"}}, r"give checksum_url or sha256"),
    ({"x86_64": {"checksum_url": "https://r/s"}}, r"machines\['x86_64'\]: expected url"),
    ({"x86_64": {"url": "https://r/a", "sha": "x"}}, r"unknown: \['sha'\]"),
    ({"x86_64": {"url": "https://r/a.tgz", "checksum_url": "https://r/s", "files": {"a/t": "/usr/bin/t"}},
      "aarch64": {"url": "https://r/b.tgz", "checksum_url": "https://r/s", "files": {"b/t": "/usr/sbin/t"}}},
     r"machines\['aarch64'\]: installs other files"),
])
def test_release_machines_are_checked_when_planned(machines: dict, error: str) -> None:
    from pyinfra.api import OperationValueError

    from portable_k3s.operations import release

    with pytest.raises(OperationValueError, match=error):
        _run_operation(release.installed, {}, component="t", version="1", files={"": "/usr/bin/t"},
                       machines=machines)


def test_prefetch_reads_the_later_early_facts_of_the_host_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's first prefetch also reads what its later ``early`` prefetches ask for, except facts that a
    prefetch without ``early`` reads (another host's operations change those); the later ones then read
    nothing themselves."""
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra.facts.server import Arch, Hostname, LinuxDistribution
    from pyinfra_testing.util import FakeState, create_host

    from portable_k3s.facts.files import FileStates
    from portable_k3s.facts.services import ServiceStates
    from portable_k3s.facts.tailscale import Tailscale
    from portable_k3s.operations import prefetch

    asked: list[tuple[list, list]] = []
    monkeypatch.setattr(prefetch, "prefetch", lambda host, reads, static: asked.append((reads, static)) or 0)
    state = FakeState()
    host = create_host(state, facts={})
    first = [(Hostname, {})]
    tailscale = [(Tailscale, {}), (ServiceStates, {"units": ("tailscaled.service",)})]
    k3s = [(FileStates, {"paths": ("/etc/rancher/k3s/config.yaml",)}), (Tailscale, {})]
    with ctx_state.use(state), ctx_host.use(host):
        planned = [(first, [(LinuxDistribution, {})], True), (tailscale, [], False), (k3s, [(Arch, {})], True)]
        indexes = [prefetch._plan(reads, static, early) for reads, static, early in planned]
        for index, (reads, static, _) in zip(indexes, planned, strict=True):
            list(prefetch._read._inner(reads=reads, static=static, index=index))
    k3s_files = (FileStates, {"paths": ("/etc/rancher/k3s/config.yaml",)})
    # Not Tailscale: the tailscale prefetch is not early.
    assert asked[0] == ([(Hostname, {}), k3s_files], [(LinuxDistribution, {}), (Arch, {})])
    assert asked[1] == ([*tailscale, k3s_files], [(Arch, {})])  # (util.prefetch skips what was read)
    assert asked[2] == (k3s, [(Arch, {})])
