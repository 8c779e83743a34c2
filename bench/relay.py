"""A delaying TCP relay: added network latency without netem.

Each target gets a listener on 127.0.0.1:<port>; every chunk read from one side is written to the other side
``delay_ms`` later, in order, without limiting throughput (chunks in flight are queued with their due time, so a
burst is delayed once, not once per chunk). So a request/response round trip through the relay costs
``2 * delay_ms`` more, like a link with that one-way latency.

The relay runs its own asyncio loop in a daemon thread: ``start()`` returns the local ports, ``stop()`` closes
the listeners and every open connection.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable


class DelayRelay:
    def __init__(self, targets: Iterable[tuple[str, int]], delay_ms: float) -> None:
        self.targets = list(targets)
        self.delay = delay_ms / 1000.0
        self.ports: dict[tuple[str, int], int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-relay", daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()

    def start(self) -> dict[tuple[str, int], int]:
        """Listen for every target; return ``{(address, port): local port}``."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return dict(self.ports)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> DelayRelay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        for target in self.targets:
            server = await asyncio.start_server(
                lambda r, w, t=target: self._relay(r, w, t), "127.0.0.1", 0
            )
            self._servers.append(server)
            self.ports[target] = server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()
        for server in self._servers:
            await server.wait_closed()
        # The relayed connections end here (their sockets are closed), not when the loop is closed under them.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                     target: tuple[str, int]) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        for writer in (client_w, upstream_w):
            sock = writer.get_extra_info("socket")
            if sock is not None:  # the relay itself must not add Nagle's delay
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._writers.add(writer)
        await asyncio.gather(
            self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w), return_exceptions=True
        )
        for writer in (client_w, upstream_w):
            self._writers.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.CancelledError):
            sender.cancel()
            raise
