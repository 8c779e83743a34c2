"""The data-plane benchmark's client and server: stdlib only, so it runs with this machine's Python inside a lab
host's network namespace (``nsenter --net``), where the lab hosts themselves have no Python.

Client (prints one JSON object)::

    dataplane_probe.py latency ADDRESS PORT --sni NAME --cafile CA --count N
    dataplane_probe.py transfer ADDRESS PORT --sni NAME --cafile CA --path /big.bin --parallel K

``latency`` opens N new connections one after the other and times, for each, the TCP connect, the handshake
(a new connection's TCP connect and TLS handshake, until the handshake is finished) and the first byte of the answer
to ``GET /`` (from sending the request); ``transfer`` fetches ``--path`` over K connections at once and times the
whole. Both speak HTTP/1.1 with ``Connection: close`` and read each answer to its end.

Server::

    dataplane_probe.py serve PORT --cert CERT --key KEY --size BYTES

answers ``GET /big.bin`` with BYTES of data and anything else with a small page, over TLS, one thread per
connection; it stops when its parent's pipe (stdin) closes, so it never outlives the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import ssl
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def _context(cafile: str | None, sni: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if not sni:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _request(sni: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\nUser-Agent: dataplane-probe\r\n\r\n".encode()


def one_connection(address: str, port: int, sni: str, context: ssl.SSLContext, path: str = "/",
                   timeout: float = 10.0) -> dict[str, Any]:
    """Connect, handshake, ask for ``path`` and read the answer to its end; the times in ms, the status and bytes."""
    started = time.perf_counter()
    raw = socket.create_connection((address, port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connected = time.perf_counter()
    with context.wrap_socket(raw, server_hostname=sni or None, do_handshake_on_connect=False) as tls:
        tls.do_handshake()
        handshaken = time.perf_counter()
        tls.sendall(_request(sni, path))
        buffer = bytearray(CHUNK)
        got = tls.recv_into(buffer)
        first = time.perf_counter()
        head = bytes(buffer[:min(got, 64)])
        total = got
        while got:
            got = tls.recv_into(buffer)
            total += got
        done = time.perf_counter()
    status = head.split(b" ", 2)[1].decode(errors="replace") if head.startswith(b"HTTP/") else "?"
    return {"connect_ms": (connected - started) * 1e3, "handshake_ms": (handshaken - started) * 1e3,
            "first_byte_ms": (first - handshaken) * 1e3, "total_ms": (done - started) * 1e3,
            "status": status, "bytes": total}


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 3) if values else 0.0,
            "p99": round(percentile(values, 99), 3), "n": len(values)}


def latency(args: argparse.Namespace) -> dict[str, Any]:
    context = _context(args.cafile, args.sni)
    results, errors = [], []
    for _ in range(args.count):
        try:
            results.append(one_connection(args.address, args.port, args.sni, context))
        except (OSError, ssl.SSLError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    statuses = sorted({r["status"] for r in results})
    return {"connect_ms": summary([r["connect_ms"] for r in results]),
            "handshake_ms": summary([r["handshake_ms"] for r in results]),
            "first_byte_ms": summary([r["first_byte_ms"] for r in results]),
            "statuses": statuses, "errors": len(errors), "error_examples": errors[:3]}


def transfer(args: argparse.Namespace) -> dict[str, Any]:
    context = _context(args.cafile, args.sni)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(one_connection, args.address, args.port, args.sni, context, args.path, 120.0)
                   for _ in range(args.parallel)]
        results, errors = [], []
        for future in futures:
            try:
                results.append(future.result())
            except (OSError, ssl.SSLError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - started
    total = sum(r["bytes"] for r in results)
    return {"parallel": args.parallel, "bytes": total, "seconds": round(elapsed, 3),
            "mbit_s": round(total * 8 / elapsed / 1e6, 1), "statuses": sorted({r["status"] for r in results}),
            "errors": len(errors), "error_examples": errors[:3]}


def serve(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    payload = os.urandom(CHUNK)
    listener = socket.create_server(("", args.port), backlog=512, reuse_port=True)
    if args.port_file:
        Path(args.port_file).write_text(f"{listener.getsockname()[1]}\n")

    def answer(raw: socket.socket) -> None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(30)
            with context.wrap_socket(raw, server_side=True) as tls:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                if request.startswith(b"GET /big.bin "):
                    tls.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {args.size}\r\nConnection: close\r\n\r\n"
                                .encode())
                    left = args.size
                    while left > 0:
                        tls.sendall(payload[:min(left, CHUNK)])
                        left -= CHUNK
                else:
                    body = b"<h1>dataplane probe</h1>\n"
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                                % (len(body), body))
        except (OSError, ssl.SSLError):
            pass
        finally:
            raw.close()

    def accept() -> None:
        while True:
            raw, _ = listener.accept()
            threading.Thread(target=answer, args=(raw,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print("listening", flush=True)
    sys.stdin.read()  # until the benchmark closes the pipe or exits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("latency", "transfer"):
        client = commands.add_parser(name)
        client.add_argument("address")
        client.add_argument("port", type=int)
        client.add_argument("--sni", default="")
        client.add_argument("--cafile")
        client.add_argument("--count", type=int, default=200)
        client.add_argument("--path", default="/big.bin")
        client.add_argument("--parallel", type=int, default=1)
    server = commands.add_parser("serve")
    server.add_argument("port", type=int)
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--size", type=int, default=64 << 20)
    server.add_argument("--port-file", help="write the port listened on here (with port 0: any free one)")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args)
        return 0
    print(json.dumps(latency(args) if args.command == "latency" else transfer(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
