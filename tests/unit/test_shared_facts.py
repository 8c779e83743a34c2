"""shared_fact: one remote read per host, fact and arguments per run phase, shared by every operation."""

from __future__ import annotations

import os
import socket
import subprocess
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from pyinfra.api import FactBase, StringCommand
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.facts.server import Hostname

from portable_k3s.facts.files import FileStates
from portable_k3s.facts.headscale import Headscale
from portable_k3s.operations.util import forget, prefetch, shared_fact


class CountingHost:
    """A host whose fact reads are counted (and take a moment, like a round trip)."""

    def __init__(self, name: str = "h1") -> None:
        self.name = name
        self.state = SimpleNamespace(is_executing=False)
        self.reads: list[tuple[str, dict[str, Any]]] = []

    def get_fact(self, fact: Any, **kwargs: Any) -> Any:
        self.reads.append((fact.__name__, kwargs))
        gevent.sleep(0.01)
        return {"read": len(self.reads)}


def test_same_fact_and_arguments_read_once() -> None:
    host = CountingHost()
    batch = ("/etc/a", "/etc/b")
    assert shared_fact(host, FileStates, paths=batch) is shared_fact(host, FileStates, paths=list(batch))
    shared_fact(host, FileStates, paths=("/etc/c",))
    assert host.reads == [("FileStates", {"paths": batch}), ("FileStates", {"paths": ("/etc/c",)})]


def test_forget_makes_the_next_operation_read_again() -> None:
    host = CountingHost()
    first = shared_fact(host, Headscale)
    forget(host, FileStates)  # another fact: no effect
    assert shared_fact(host, Headscale) is first
    forget(host, Headscale)
    assert shared_fact(host, Headscale) == {"read": 2}


def test_planning_and_execution_each_read_unless_static() -> None:
    host = CountingHost()
    shared_fact(host, Headscale)
    shared_fact(host, FileStates, static=True, paths=("/x",))
    host.state.is_executing = True
    shared_fact(host, Headscale)
    shared_fact(host, FileStates, static=True, paths=("/x",))
    assert [name for name, _ in host.reads] == ["Headscale", "FileStates", "Headscale"]


def test_many_hosts_asking_at_once_cause_one_read() -> None:
    server = CountingHost("headscale")
    values = [job.value for job in gevent.joinall([gevent.spawn(shared_fact, server, Headscale) for _ in range(8)])]
    assert server.reads == [("Headscale", {})]
    assert all(value is values[0] for value in values)


def test_hosts_do_not_share_reads() -> None:
    one, two = CountingHost("h1"), CountingHost("h2")
    shared_fact(one, Headscale)
    shared_fact(two, Headscale)
    assert len(one.reads) == len(two.reads) == 1


# prefetch: several facts in one command, parsed into the shared reads


class _Failing(FactBase):
    """A fact whose command fails."""

    def command(self) -> str:
        return "echo partial; exit 3"

    def process(self, output: list[str]) -> list[str]:
        return output


class _Missing(FactBase):
    """A fact whose required command does not exist."""

    requires_command = "portable-k3s-no-such-command"

    def command(self) -> str:
        return "portable-k3s-no-such-command"


class LocalShellHost(CountingHost):
    """A host whose commands run in this machine's shell, for real (the combined command is real bash)."""

    def __init__(self) -> None:
        super().__init__()
        self.state = SimpleNamespace(is_executing=True, print_fact_output=False, print_fact_input=False)
        self.data = SimpleNamespace(get=lambda key, default=None: default)
        self.current_op_global_arguments: dict[str, Any] = {}
        self.commands: list[str] = []

    def run_shell_command(self, command: Any, **kwargs: Any) -> tuple[bool, CommandOutput]:
        text = command.get_raw_value()
        self.commands.append(text)
        proc = subprocess.run(["sh", "-c", text], capture_output=True, text=True, timeout=30)
        lines = [OutputLine("stdout", line) for line in proc.stdout.splitlines()]
        return proc.returncode == 0, CommandOutput(lines)


def test_prefetch_reads_several_facts_in_one_real_command_as_each_would_alone(tmp_path) -> None:
    present = tmp_path / "present.conf"
    present.write_text("x = 1\n")
    os.chmod(present, 0o640)
    paths = (str(present), str(tmp_path / "missing.conf"))
    host = LocalShellHost()
    count = prefetch(host, [(FileStates, {"paths": paths}), (Hostname, {}), (_Failing, {}), (_Missing, {})])
    assert count == 2 and len(host.commands) == 1
    # The shared reads now hold what each fact's own command gives, parsed by the fact itself.
    alone = subprocess.run(["sh", "-c", FileStates().command(paths=paths).get_raw_value()],
                           capture_output=True, text=True).stdout.splitlines()
    assert shared_fact(host, FileStates, paths=list(paths)) == FileStates().process(alone)
    assert shared_fact(host, FileStates, paths=paths)[str(present)]["mode"] == "640"
    assert shared_fact(host, Hostname) == socket.gethostname()
    assert host.reads == []  # served from the one command
    # A failing or missing fact is left to the usual read (pyinfra's own error handling).
    shared_fact(host, _Failing)
    shared_fact(host, _Missing)
    assert [name for name, _ in host.reads] == ["_Failing", "_Missing"]
    # Read already: a second prefetch sends nothing.
    assert prefetch(host, [(FileStates, {"paths": paths}), (Hostname, {})]) == 0 and len(host.commands) == 1


def test_prefetch_reads_static_facts_in_the_same_command_for_the_whole_run() -> None:
    from pyinfra.facts.server import Arch

    host = LocalShellHost()
    host.state.is_executing = False  # planning
    assert prefetch(host, [(Hostname, {})], static=[(Arch, {})]) == 2 and len(host.commands) == 1
    host.state.is_executing = True  # the execution phase: a static read is not read again
    assert shared_fact(host, Arch, static=True) == subprocess.run(["uname", "-m"], capture_output=True,
                                                                   text=True).stdout.strip()
    assert host.reads == []
    shared_fact(host, Hostname)  # a per-phase read is
    assert [name for name, _ in host.reads] == ["Hostname"]


def test_prefetch_runs_a_fact_asked_for_twice_once() -> None:
    """Two components asking for the same fact (tailscale's status for the tailscale and k3s deploys) in one
    prefetch: its command is in the one remote command once."""
    host = LocalShellHost()
    assert prefetch(host, [(Hostname, {}), (_Failing, {}), (Hostname, {})]) == 1
    assert host.commands[0].count("uname -n") == 1 and host.commands[0].count("exit 3") == 1, host.commands
    assert shared_fact(host, Hostname) == socket.gethostname() and host.reads == []


def test_prefetch_runs_a_shared_answer_once_for_all_its_facts(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchdog, panic and timesyncd facts all print the systemd manager's properties (the container type,
    the runtime watchdog): read together, one ``systemctl show`` runs (a real shell, with a stand-in systemctl
    that counts its runs); each fact gets the same answer as when read alone."""
    from portable_k3s.facts.hardware import PanicSysctl, Watchdog
    from portable_k3s.facts.timesync import Timesyncd

    runs = tmp_path / "runs"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(
        f"#!/bin/sh\necho run >> {runs}\nprintf 'Virtualization=systemd-nspawn\\nRuntimeWatchdogUSec=15s\\n'\n"
    )
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    reads = [(Watchdog, {}), (PanicSysctl, {}), (Timesyncd, {})]
    host = LocalShellHost()
    assert prefetch(host, reads) == 3 and len(host.commands) == 1
    assert runs.read_text().splitlines() == ["run"]
    assert shared_fact(host, Watchdog, **reads[0][1])["runtime_watchdog_sec"] == 15
    for fact, kwargs in reads:
        assert shared_fact(host, fact, **kwargs)["container"] == "systemd-nspawn"
        alone = subprocess.run(["sh", "-c", StringCommand(fact().command(**kwargs)).get_raw_value()],
                               capture_output=True, text=True).stdout.splitlines()
        assert fact().process(alone) == shared_fact(host, fact, **kwargs)
    assert host.reads == [] and len(runs.read_text().splitlines()) == 4  # then once per fact read alone


def test_prefetch_reads_the_file_and_unit_states_of_several_components_in_one_go(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two components' FileStates and ServiceStates reads: one ``stat``/``sha256sum`` and one ``systemctl show``
    for all of them (a real shell; systemctl is a stand-in that counts its runs and names an alias by its
    unit's name, as systemd does). Each read gets what it would get alone; a read whose part cannot be told
    apart (the alias) is left to its operation."""
    from portable_k3s.facts.services import ServiceStates

    runs = tmp_path / "runs"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(
        f"#!/bin/sh\necho run >> {runs}\nfor u in \"$@\"; do case $u in -*|Id|ActiveState|UnitFileState) continue;; "
        "esac; [ \"$u\" = alias.service ] && u=b.service; printf 'Id=%s\\nActiveState=active\\nUnitFileState=enabled"
        "\\n\\n' \"$u\"; done\n"
    )
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for name in ("a.conf", "b.conf"):
        (tmp_path / name).write_text(name)
    first, second = (str(tmp_path / "a.conf"), str(tmp_path / "gone.conf")), (str(tmp_path / "b.conf"),)
    reads = [(FileStates, {"paths": first}), (ServiceStates, {"units": ("a.service",)}),
             (FileStates, {"paths": second}), (ServiceStates, {"units": ("b.service",)}),
             (ServiceStates, {"units": ("alias.service",)})]
    host = LocalShellHost()
    assert prefetch(host, reads) == 4 and len(host.commands) == 1
    assert host.commands[0].count("sha256sum") == 1 and runs.read_text().splitlines() == ["run"]
    for paths in (first, second):
        alone = subprocess.run(["sh", "-c", FileStates().command(paths=paths).get_raw_value()],
                               capture_output=True, text=True).stdout.splitlines()
        assert shared_fact(host, FileStates, paths=paths) == FileStates().process(alone)
    assert shared_fact(host, ServiceStates, units=("a.service",)) == {"a.service": {"active": True,
                                                                                    "enabled": "enabled"}}
    assert list(shared_fact(host, ServiceStates, units=("b.service",))) == ["b.service"]
    assert host.reads == []
    shared_fact(host, ServiceStates, units=("alias.service",))
    assert [name for name, _ in host.reads] == ["ServiceStates"]


class _Cd(FactBase):
    """A fact whose command changes the shell's directory (it needs its subshell)."""

    def command(self) -> str:
        return "cd / && pwd"

    def process(self, output: list[str]) -> list[str]:
        return output


def test_prefetch_runs_facts_without_a_subshell_only_where_nothing_outlives_them(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FileStates says it needs no subshell and runs in the shell itself; a fact that does not say so keeps its
    subshell, so its ``cd`` does not move the FileStates read after it (relative paths, a real shell)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.conf").write_text("x")
    os.chmod(tmp_path / "here.conf", 0o640)
    host = LocalShellHost()
    assert prefetch(host, [(_Cd, {}), (FileStates, {"paths": ("here.conf",)})]) == 2
    assert "( cd / && pwd );" in host.commands[0] and "{ stat -c" in host.commands[0]
    assert shared_fact(host, _Cd) == ["/"]
    assert shared_fact(host, FileStates, paths=("here.conf",))["here.conf"]["mode"] == "640"


def test_on_a_pyinfra_the_adapter_does_not_know_reads_go_through_pyinfras_public_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """portable_k3s.adapter falls back to the public API: every read is pyinfra's own, nothing is read ahead, the
    SSH socket and pyinfra's planning are left alone."""
    from portable_k3s import adapter

    monkeypatch.setattr(adapter, "pyinfra_version", lambda: (4, 0))
    adapter.supported.cache_clear()
    try:
        assert adapter.supported() is False
        host = LocalShellHost()
        assert prefetch(host, [(Hostname, {})]) == 0 and host.commands == []
        shared_fact(host, Hostname)
        shared_fact(host, Hostname)
        assert [name for name, _ in host.reads] == ["Hostname", "Hostname"]
        with socket.socket() as sock:
            ssh_host = SimpleNamespace(connector=SimpleNamespace(client=SimpleNamespace(
                get_transport=lambda: SimpleNamespace(sock=sock))))
            assert adapter.ssh_socket(ssh_host) is None  # type: ignore[arg-type]
        assert adapter.wrap_connector(ssh_host, "x", lambda method: method) is False  # type: ignore[arg-type]
        from pyinfra.api import util

        before = util.stack
        monkeypatch.setattr(util, "stack", __import__("inspect").stack)
        assert adapter.fast_operation_order() is False and util.stack is not adapter.frames
        monkeypatch.setattr(util, "stack", before)
    finally:
        monkeypatch.undo()
        adapter.supported.cache_clear()
    assert adapter.supported() is True


def test_a_pending_mark_is_read_when_the_run_asks_not_while_planning() -> None:
    """``services.left_pending`` gives a check for an ``_if``: nothing is read while the deploy is planned; asked at
    run time it reads the component's batch of files (which the host's prefetch has read already), once."""
    from pyinfra.context import ctx_host

    from portable_k3s.operations import services

    host = CountingHost()
    with ctx_host.use(host):
        pending = services.left_pending("/run/portable-k3s/pending/nginx.service.reload", ("/etc/nginx/x.conf",))
    assert host.reads == []
    host.state.is_executing = True
    host.get_fact = lambda fact, **kwargs: (host.reads.append((fact.__name__, kwargs)),  # type: ignore[method-assign]
                                            {"/run/portable-k3s/pending/nginx.service.reload": {"sha256": "x"}})[1]
    assert pending() is True and pending() is True
    assert host.reads == [("FileStates", {"paths": ("/etc/nginx/x.conf",)})]


def test_a_pending_mark_made_by_this_runs_own_change_is_not_taken_for_one_left_behind() -> None:
    """The run writes a file (its operation forgets FileStates, and the mark is on the host now): the check still
    answers what the run started with, so nothing is reloaded for the mark this run made itself."""
    from pyinfra.context import ctx_host

    from portable_k3s.operations import services

    marker, batch = "/run/portable-k3s/pending/k3s.service", ("/etc/rancher/k3s/config.yaml",)
    host = CountingHost()
    host.state.is_executing = True
    answers = iter([{}, {marker: {"sha256": "x"}}])
    host.get_fact = lambda fact, **kwargs: (host.reads.append((fact.__name__, kwargs)), next(answers))[1]  # type: ignore[method-assign]
    with ctx_host.use(host):
        pending = services.left_pending(marker, batch)
    assert shared_fact(host, FileStates, paths=batch) == {}  # the prefetch's read, at the start of the run
    forget(host, FileStates)  # an operation wrote a file, and made the mark
    assert shared_fact(host, FileStates, paths=batch) == {marker: {"sha256": "x"}}
    assert pending() is False
