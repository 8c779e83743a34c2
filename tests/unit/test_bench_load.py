"""The entrance's load tool without a lab: its hostile openings are what they claim to be, its plans are bounded,
and a short run against a local TLS server (the data-plane probe's) counts visits and hostile connections."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.load import Hostile, LoadPlan, Visit, client_hello, junk, oversized_hello, report, run_load

REPO = Path(__file__).resolve().parents[2]
NAME = "probe.lab.invalid"


def test_the_replayed_client_hello_is_a_tls_handshake_record_naming_the_server() -> None:
    hello = client_hello("blog.example.org")
    assert hello[0] == 0x16 and hello[1] == 0x03 and hello[5] == 0x01  # handshake record, ClientHello
    assert int.from_bytes(hello[3:5], "big") == len(hello) - 5
    assert b"blog.example.org" in hello


def test_the_oversized_hello_claims_64_kib_in_records_of_at_most_16_kib() -> None:
    data = oversized_hello()
    records, at = [], 0
    while at < len(data):
        assert data[at:at + 3] == b"\x16\x03\x01"
        length = int.from_bytes(data[at + 3:at + 5], "big")
        assert length <= 16384
        records.append(data[at + 5:at + 5 + length])
        at += 5 + length
    body = b"".join(records)
    assert body[0] == 0x01 and int.from_bytes(body[1:4], "big") == 64 << 10 == len(body) - 4


def test_the_malformed_openings_are_junk_http_and_a_cut_off_hello() -> None:
    assert len(junk(0, NAME)) == 512
    assert junk(1, NAME).startswith(b"GET / HTTP/1.1\r\nHost: probe.lab.invalid")
    cut = junk(2, NAME)
    assert cut[0] == 0x16 and int.from_bytes(cut[3:5], "big") > len(cut) - 5


@pytest.mark.parametrize(("change", "message"), [
    ({"seconds": 0}, "seconds must be in"), ({"seconds": 601}, "seconds must be in"),
    ({"rate": 0}, "rate must be in"), ({"rate": 501}, "rate must be in"),
    ({"idle": 10001}, "idle must be in"), ({"malformed": -1}, "malformed must be in"),
])
def test_a_plan_is_bounded(change: dict, message: str) -> None:
    plan = LoadPlan("127.0.0.1", NAME, "ca.pem", **change)
    with pytest.raises(ValueError, match=message):
        plan.check()


def test_the_report_counts_failures_with_their_times() -> None:
    visits = [Visit(0.1, 2.0, 1.0, "200"), Visit(0.5, error="TimeoutError: "), Visit(0.3, 3.0, 1.5, "200"),
              Visit(0.2, error="ConnectionResetError: reset")]
    found = report(LoadPlan("127.0.0.1", NAME, "ca.pem"), visits, {"idle": Hostile(3, 1, 2)}, 1.0)
    assert (found["visits"], found["ok"], found["failed"], found["success"]) == (4, 2, 2, 0.5)
    assert found["failed_at_s"] == [0.2, 0.5]
    assert found["errors"] == {"TimeoutError": 1, "ConnectionResetError": 1}
    assert found["handshake_ms"]["p50"] == 2.5 and found["hostile"]["idle"]["closed_by_peer"] == 2
    assert "cafile" not in found["plan"]


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def test_a_short_run_against_a_local_tls_server_counts_visits_and_hostile_connections(tmp_path) -> None:
    cert, key = _certificate(tmp_path)
    server = subprocess.Popen([sys.executable, str(REPO / "bench" / "dataplane_probe.py"), "serve", "0", "--cert",
                               str(cert), "--key", str(key), "--size", "1024", "--port-file", str(tmp_path / "port")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        port = int((tmp_path / "port").read_text())
        started = time.monotonic()
        found = run_load(LoadPlan("127.0.0.1", NAME, str(cert), port=port, rate=20, seconds=2, idle=5, slow=2,
                                  oversized=2, malformed=3))
        assert time.monotonic() - started < 20
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
    assert 35 <= found["visits"] <= 41 and found["success"] == 1.0, found
    assert found["handshake_ms"]["n"] == found["visits"] and found["first_byte_ms"]["p99"] > 0
    hostile = found["hostile"]
    assert hostile["idle"]["opened"] >= 5 and hostile["slow"]["opened"] >= 2
    assert hostile["oversized"]["opened"] >= 3 and hostile["malformed"]["opened"] >= 5
    # The probe server closes a connection whose TLS handshake fails: every oversized one, and the malformed ones
    # but the cut-off ClientHellos (every third), which it waits on.
    assert hostile["oversized"]["closed_by_peer"] == hostile["oversized"]["opened"]
    opened = hostile["malformed"]["opened"]
    assert opened - (opened + 2) // 3 <= hostile["malformed"]["closed_by_peer"] < opened
