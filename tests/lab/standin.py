"""The lab's INGRESS STAND-IN and a TLS client that plays the internet, shared by the entrance and move tests.

The cluster ingress does not exist in the lab (its k3s is a stand-in too), so each k3s-role host runs nginx with
``listen 443 ssl proxy_protocol`` and certificates from a test CA made by the tests, answering with the SNI it
received and the client address from the PROXY header.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

PUBLIC = "blog.example.org"
PRIVATE = "pass.example.org"
BACKENDS = ("h2", "h3", "h4")

STANDIN_CONF = r"""# INGRESS STAND-IN for the lab tier (tests/lab/standin.py), not the cluster's ingress.
user www-data;
worker_processes 1;
pid /run/nginx.pid;
include /etc/nginx/modules-enabled/*.conf;
events {}
http {
    log_format standin '$remote_addr pp=$proxy_protocol_addr sni=$ssl_server_name host=$host "$request"';
    access_log /var/log/nginx/standin.log standin;
    server {
        listen 443 ssl proxy_protocol;
        ssl_certificate /etc/standin/cert.pem;
        ssl_certificate_key /etc/standin/key.pem;
        location / { return 200 "standin=$hostname sni=$ssl_server_name client=$proxy_protocol_addr\n"; }
    }
    server {
        listen 80;
        location /.well-known/acme-challenge/ {
            return 200 "standin=$hostname acme host=$host xff=$http_x_forwarded_for\n";
        }
    }
}
stream {
    log_format standin_tcp '$remote_addr tcp';
    access_log /var/log/nginx/standin.log standin_tcp;
    server { listen 25565; return "standin=$hostname tcp from=$remote_addr\n"; }
}
"""



def entrance(lab) -> str:
    return next(h.address for h in lab.hosts() if "entrance" in h.groups)


def tls(lab, ca: Path, sni: str | None, request: bytes = b"GET / HTTP/1.0\r\n\r\n") -> tuple[dict, str]:
    context = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    context.check_hostname = sni is not None
    if sni is None:
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((entrance(lab), 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            cert = tls.getpeercert() or {}
            tls.sendall(request.replace(b"HTTP/1.0\r\n", f"HTTP/1.0\r\nHost: {sni}\r\n".encode(), 1))
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    return cert, data.decode()
