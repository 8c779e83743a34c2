"""shared_fact: one remote read per host, fact and arguments per run phase, shared by every operation."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gevent

from portable_k3s.facts.files import FileStates
from portable_k3s.facts.headscale import Headscale
from portable_k3s.operations.util import forget, shared_fact


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
