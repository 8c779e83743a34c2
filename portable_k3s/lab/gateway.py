"""The lab's one way out: the artifact server, and an apt proxy to this machine's own Debian mirrors.

Lab hosts may not reach anything beyond this machine (the lab's firewall rejects it). They still install Debian
packages: apt in every lab host is pointed at this server, which forwards only to the mirrors named in the apt
sources of this machine and of the lab image (mmdebstrap derives those from this machine's). Any other path is
served from the artifact directory.

    python -m portable_k3s.lab.gateway --bind ADDRESS --port PORT --directory DIR --apt-dir /etc/apt ...
"""

from __future__ import annotations

import argparse
import functools
import http.client
import select
import socket
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

APT_SOURCES = Path("/etc/apt")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}


def apt_mirror_hosts(apt_dir: Path = APT_SOURCES) -> set[str]:
    """Host names of the enabled apt sources (one-line ``.list`` and deb822 ``.sources`` files)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list")),
             *sorted((apt_dir / "sources.list.d").glob("*.sources"))]
    hosts: set[str] = set()
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith(("deb ", "deb-src ")):
                words = [w for w in line.split() if "://" in w]
            elif line.lower().startswith("uris:"):
                words = line.split()[1:]
            else:
                continue
            hosts.update(urlsplit(w).hostname or "" for w in words)
    hosts.discard("")
    return hosts


class GatewayHandler(SimpleHTTPRequestHandler):
    """Files from the artifact directory; absolute-URI GETs and CONNECTs to the allowed mirrors."""

    protocol_version = "HTTP/1.1"
    allowed: frozenset[str] = frozenset()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("http://"):
            self._proxy_get()
        else:
            super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if self.path.startswith("http://"):
            self._proxy_get()
        else:
            super().do_HEAD()

    def do_CONNECT(self) -> None:  # noqa: N802
        host, _, port = self.path.rpartition(":")
        if host not in self.allowed or port != "443":
            self.send_error(403, f"the lab reaches only this machine's apt mirrors, not {self.path}")
            return
        try:
            upstream = socket.create_connection((host, 443), timeout=30)
        except OSError as exc:
            self.send_error(502, f"{self.path}: {exc}")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        with upstream:
            _splice(self.connection, upstream)

    def _proxy_get(self) -> None:
        url = urlsplit(self.path)
        if url.hostname not in self.allowed:
            self.send_error(403, f"the lab reaches only this machine's apt mirrors, not {url.hostname}")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
        try:
            conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""), headers=headers)
            response = conn.getresponse()
        except OSError as exc:
            conn.close()
            self.send_error(502, f"{url.hostname}: {exc}")
            return
        try:
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            if response.getheader("Content-Length") is None and self.command != "HEAD":
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                while chunk := response.read(65536):
                    self.wfile.write(chunk)
        finally:
            conn.close()


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], 300)
        if not readable:
            return
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            (b if sock is a else a).sendall(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m portable_k3s.lab.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", required=True)
    parser.add_argument("--apt-dir", action="append", type=Path, default=[], help="apt config dir to allow mirrors of")
    args = parser.parse_args(argv)
    allowed = frozenset().union(*(apt_mirror_hosts(d) for d in args.apt_dir or [APT_SOURCES]))
    handler = type("Handler", (GatewayHandler,), {"allowed": allowed})
    with ThreadingHTTPServer((args.bind, args.port), functools.partial(handler, directory=args.directory)) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
