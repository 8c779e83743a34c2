"""The lab gateway's allow-list: the mirrors of this machine's apt sources, nothing else."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from portable_k3s.lab.gateway import GatewayHandler, apt_mirror_hosts


def test_mirror_hosts_from_one_line_and_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [signed-by=/k.gpg] http://mirror-a.example/debian bookworm main\n"
        "deb-src https://mirror-b.example:8443/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror-c.example/debian http://mirror-d.example/debian\nSuites: bookworm\n"
    )
    (tmp_path / "sources.list.d" / "off.sources.disabled").write_text("Types: deb\nURIs: http://off.example/\n")
    assert apt_mirror_hosts(tmp_path) == {
        "mirror-a.example", "mirror-b.example", "mirror-c.example", "mirror-d.example"
    }


@pytest.fixture
def gateway(tmp_path: Path):
    (tmp_path / "tailscale.tgz").write_bytes(b"artifact")
    handler = type("Handler", (GatewayHandler,), {"allowed": frozenset({"mirror.invalid"})})
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_gateway_serves_artifacts_and_refuses_other_hosts(gateway: str) -> None:
    with urllib.request.urlopen(f"{gateway}/tailscale.tgz", timeout=5) as response:
        assert response.read() == b"artifact"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": gateway}))
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open("http://example.org/", timeout=5)
    assert refused.value.code == 403
    assert b"apt mirrors" in refused.value.read()
