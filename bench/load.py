"""Load and hostile clients against the entrance: bounded in count and time, stopping by itself.

Run as root from the repository root, against a lab (``python -m portable_k3s.lab up`` and a deploy)::

    .venv/bin/python bench/load.py ENTRANCE --sni blog.example.org --cafile CA --rate 50 --seconds 60 \\
        --idle 3000 --slow 200 --oversized 20 --malformed 20 --hostile-source 10.231.1.8 --json /tmp/load.json

Visitors open ``--rate`` new TLS connections a second for ``--seconds`` s (each: TCP connect, TLS handshake with the
public name, ``GET /``, the answer read to its end; 5 s at most per step) and report their error rate and the p50/p99
of the handshake and of the first byte, with the seconds into the run at which any failed. At the same time, from
``--hostile-source`` (an address of this machine, so that the entrance's per-address limit applies to it and not to
the visitors): ``--idle`` connections that send nothing, each re-opened a second after the entrance closes it;
``--slow`` connections that send a real ClientHello one byte a second; ``--oversized`` a second that send a 64 KiB
ClientHello; ``--malformed`` a second that send junk (random bytes, plain HTTP, a cut-off ClientHello). Connections
go to ``ADDRESS`` (default port 443) only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dataplane_probe import summary  # noqa: E402

MAX_SECONDS = 600
MAX_RATE = 500
MAX_HOSTILE = 10000
STEP_TIMEOUT = 5.0
REOPEN_AFTER = 1.0  # a kept connection the entrance closed is opened again this long after


@dataclass
class LoadPlan:
    """What one run does (see the module's docstring); ``address`` is the entrance's."""

    address: str
    sni: str
    cafile: str
    port: int = 443
    rate: float = 20.0
    seconds: float = 20.0
    idle: int = 0
    slow: int = 0
    oversized: float = 0.0
    malformed: float = 0.0
    hostile_source: str | None = None

    def check(self) -> None:
        """Refuse a plan that is not bounded."""
        if not 0 < self.seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS}]: {self.seconds}")
        if not 0 < self.rate <= MAX_RATE:
            raise ValueError(f"rate must be in (0, {MAX_RATE}]: {self.rate}")
        for name in ("idle", "slow", "oversized", "malformed"):
            if not 0 <= getattr(self, name) <= MAX_HOSTILE:
                raise ValueError(f"{name} must be in [0, {MAX_HOSTILE}]: {getattr(self, name)}")


@dataclass
class Visit:
    started: float  # seconds into the run
    handshake_ms: float | None = None
    first_byte_ms: float | None = None
    status: str | None = None
    error: str | None = None


@dataclass
class Hostile:
    opened: int = 0
    refused: int = 0  # could not connect at all
    closed_by_peer: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def client_hello(sni: str) -> bytes:
    """The ClientHello this machine's TLS would send for ``sni`` (what a scanner replays)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def oversized_hello(size: int = 64 << 10) -> bytes:
    """A ClientHello that claims ``size`` bytes, in 16 KiB records of junk after a valid header."""
    body = os.urandom(size)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    records = b""
    for i in range(0, len(handshake), 16384):
        chunk = handshake[i:i + 16384]
        records += b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
    return records


def junk(kind: int, sni: str) -> bytes:
    """Malformed openings: random bytes, a plain HTTP request, a ClientHello cut off in the middle."""
    if kind == 0:
        return os.urandom(512)
    if kind == 1:
        return f"GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode()
    hello = client_hello(sni)
    return hello[:len(hello) // 2]


async def visit(plan: LoadPlan, context: ssl.SSLContext, started: float, t0: float) -> Visit:
    result = Visit(round(started - t0, 3))
    writer = None
    try:
        begin = time.perf_counter()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            plan.address, plan.port, ssl=context, server_hostname=plan.sni, ssl_handshake_timeout=STEP_TIMEOUT),
            STEP_TIMEOUT * 2)
        result.handshake_ms = (time.perf_counter() - begin) * 1e3
        writer.write(f"GET / HTTP/1.1\r\nHost: {plan.sni}\r\nConnection: close\r\n\r\n".encode())
        sent = time.perf_counter()
        first = await asyncio.wait_for(reader.read(4096), STEP_TIMEOUT)
        result.first_byte_ms = (time.perf_counter() - sent) * 1e3
        result.status = first.split(b" ", 2)[1].decode(errors="replace") if first.startswith(b"HTTP/") else "?"
        await asyncio.wait_for(reader.read(), STEP_TIMEOUT)
        if result.status != "200":
            result.error = f"status {result.status}"
    except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
    return result


async def _hostile_connection(plan: LoadPlan, payload: bytes, stats: Hostile, per_byte: float = 0.0,
                              hold: float = 0.0) -> None:
    """One hostile connection: send ``payload`` (a byte every ``per_byte`` s if set), then wait up to ``hold`` s
    for the entrance to close it."""
    local = (plan.hostile_source, 0) if plan.hostile_source else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(plan.address, plan.port, local_addr=local), STEP_TIMEOUT)
    except (TimeoutError, OSError) as exc:
        stats.refused += 1
        stats.errors[type(exc).__name__] = stats.errors.get(type(exc).__name__, 0) + 1
        await asyncio.sleep(0.05)
        return
    stats.opened += 1
    try:
        if per_byte:
            for i in range(len(payload)):
                writer.write(payload[i:i + 1])
                await writer.drain()
                if await _closed(reader, per_byte):
                    stats.closed_by_peer += 1
                    return
        elif payload:
            writer.write(payload)
            await writer.drain()
        if await _closed(reader, hold):
            stats.closed_by_peer += 1
    except OSError:
        stats.closed_by_peer += 1
    finally:
        writer.close()


async def _closed(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the peer closed the connection (EOF, a reset, or an alert and EOF) within ``within`` s."""
    end = time.monotonic() + within
    while (left := end - time.monotonic()) > 0:
        try:
            data = await asyncio.wait_for(reader.read(4096), left)
        except TimeoutError:
            return False
        except OSError:
            return True
        if not data:
            return True
    return False


async def _keep(count: int, make: Any, until: float) -> None:
    """Keep ``count`` connections made by ``make()`` going until ``until`` (re-opened as they end)."""

    async def slot() -> None:
        while time.monotonic() < until:
            await make()
            await asyncio.sleep(REOPEN_AFTER)

    await asyncio.gather(*(slot() for _ in range(count)))


async def _every(rate: float, make: Any, until: float) -> None:
    tasks = set()
    while time.monotonic() < until:
        task = asyncio.ensure_future(make())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(1 / rate)
    if tasks:
        await asyncio.wait(tasks, timeout=STEP_TIMEOUT * 3)


async def run(plan: LoadPlan) -> dict[str, Any]:
    plan.check()
    context = ssl.create_default_context(cafile=plan.cafile)
    t0 = time.monotonic()
    until = t0 + plan.seconds
    hostile = {"idle": Hostile(), "slow": Hostile(), "oversized": Hostile(), "malformed": Hostile()}
    hello = client_hello(plan.sni)
    big = oversized_hello()
    remaining = lambda: max(until - time.monotonic(), 0.0)  # noqa: E731
    kept = [
        asyncio.ensure_future(_keep(plan.idle, lambda: _hostile_connection(
            plan, b"", hostile["idle"], hold=remaining()), until)),
        asyncio.ensure_future(_keep(plan.slow, lambda: _hostile_connection(
            plan, hello, hostile["slow"], per_byte=1.0), until)),
    ]
    paced = []  # each of their connections ends by itself within STEP_TIMEOUT: waited for, so all are counted
    if plan.oversized:
        paced.append(asyncio.ensure_future(_every(plan.oversized, lambda: _hostile_connection(
            plan, big, hostile["oversized"], hold=STEP_TIMEOUT), until)))
    if plan.malformed:
        kinds = itertools.cycle(range(3))
        paced.append(asyncio.ensure_future(_every(plan.malformed, lambda: _hostile_connection(
            plan, junk(next(kinds), plan.sni), hostile["malformed"], hold=STEP_TIMEOUT), until)))
    visits: list[Visit] = []
    pending: set[asyncio.Future] = set()
    interval = 1 / plan.rate
    next_at = t0
    while (now := time.monotonic()) < until:
        if now >= next_at:
            task = asyncio.ensure_future(visit(plan, context, now, t0))
            task.add_done_callback(lambda t: visits.append(t.result()))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += interval
        await asyncio.sleep(max(0.0, min(next_at - time.monotonic(), 0.05)))
    if pending:
        await asyncio.wait(pending, timeout=STEP_TIMEOUT * 3)
    await asyncio.gather(*paced, return_exceptions=True)
    for job in kept:
        job.cancel()
    await asyncio.gather(*kept, return_exceptions=True)
    return report(plan, visits, hostile, time.monotonic() - t0)


def report(plan: LoadPlan, visits: list[Visit], hostile: dict[str, Hostile], wall: float) -> dict[str, Any]:
    """The run's figures: visitors' success, latencies and failures; what each hostile kind got."""
    ok = [v for v in visits if v.error is None]
    failed = sorted((v for v in visits if v.error is not None), key=lambda v: v.started)
    errors: dict[str, int] = {}
    for v in failed:
        kind = (v.error or "").split(":", 1)[0]
        errors[kind] = errors.get(kind, 0) + 1
    return {
        "plan": {k: v for k, v in vars(plan).items() if k != "cafile"},
        "wall_s": round(wall, 2),
        "visits": len(visits), "ok": len(ok), "failed": len(failed),
        "success": round(len(ok) / len(visits), 4) if visits else 0.0,
        "handshake_ms": summary([v.handshake_ms for v in ok if v.handshake_ms is not None]),
        "first_byte_ms": summary([v.first_byte_ms for v in ok if v.first_byte_ms is not None]),
        "failed_at_s": [v.started for v in failed],
        "errors": errors,
        "error_examples": [v.error for v in failed[:5]],
        "hostile": {kind: vars(stats) for kind, stats in hostile.items()},
    }


def run_load(plan: LoadPlan) -> dict[str, Any]:
    """Run ``plan`` (raising the open-file limit for its connections); its report."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = plan.idle + plan.slow + int(plan.rate * STEP_TIMEOUT * 3) + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    return asyncio.run(run(plan))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", help="the entrance's address")
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--sni", required=True, help="the public name the visitors ask for")
    parser.add_argument("--cafile", required=True, help="the CA the app's certificate is checked against")
    parser.add_argument("--rate", type=float, default=20.0, help="new visitor connections a second (default 20)")
    parser.add_argument("--seconds", type=float, default=20.0, help=f"how long (default 20, at most {MAX_SECONDS})")
    parser.add_argument("--idle", type=int, default=0, help="idle connections kept open")
    parser.add_argument("--slow", type=int, default=0, help="connections sending a ClientHello a byte a second")
    parser.add_argument("--oversized", type=float, default=0.0, help="64 KiB ClientHellos a second")
    parser.add_argument("--malformed", type=float, default=0.0, help="junk openings a second")
    parser.add_argument("--hostile-source", help="this machine's address the hostile connections come from")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    plan = LoadPlan(args.address, args.sni, args.cafile, args.port, args.rate, args.seconds, args.idle, args.slow,
                    args.oversized, args.malformed, args.hostile_source)
    try:
        plan.check()
    except ValueError as exc:
        parser.error(str(exc))
    result = run_load(plan)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "failed_at_s"}, indent=1))
    return 0 if result["success"] >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
