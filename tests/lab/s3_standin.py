"""An S3 STAND-IN for the lab tests: an HTTP server on this machine that takes PUT Object requests only when they
carry a valid AWS Signature Version 4 (the key pair of the lab, the signed headers, the payload's sha256 and a
request time within 15 minutes), as S3 checks them, and keeps the objects in memory. It is not S3 (no S3-compatible
server is served here: MinIO's module is not on the Go module proxy, gofakes3's served version cannot check
signatures); it checks what the backup script's `curl --aws-sigv4` request must get right."""

from __future__ import annotations

import hashlib
import hmac
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_SKEW = timedelta(minutes=15)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signature_problem(method: str, target: str, headers: dict[str, str], body: bytes, keys: dict[str, str],
                      region: str, now: datetime | None = None) -> str | None:
    """Why S3 would refuse this request's AWS Signature V4 (an S3 error code and detail), or None when it is valid.
    ``headers`` are lower-case names to values; ``keys`` maps access keys to secret keys."""
    auth = headers.get("authorization", "")
    scheme, _, rest = auth.partition(" ")
    if scheme != "AWS4-HMAC-SHA256":
        return f"AccessDenied: not signed with AWS4-HMAC-SHA256 ({scheme or 'no Authorization'})"
    fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
    access, date, scope_region, service, terminal = (fields.get("Credential", "").split("/") + [""] * 5)[:5]
    if access not in keys:
        return f"InvalidAccessKeyId: {access!r}"
    if (scope_region, service, terminal) != (region, "s3", "aws4_request"):
        return f"AuthorizationHeaderMalformed: scope {scope_region}/{service}/{terminal}"
    signed = fields.get("SignedHeaders", "").split(";")
    if not {"host", "x-amz-date", "x-amz-content-sha256"} <= set(signed):
        return f"AccessDenied: SignedHeaders {signed} leave out host, x-amz-date or x-amz-content-sha256"
    stamp = headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return f"AccessDenied: x-amz-date {stamp!r}"
    if abs((now or datetime.now(UTC)) - when) > MAX_SKEW or not stamp.startswith(date):
        return f"RequestTimeTooSkewed: {stamp}"
    payload = headers.get("x-amz-content-sha256", "")
    if payload != "UNSIGNED-PAYLOAD" and payload != hashlib.sha256(body).hexdigest():
        return "XAmzContentSHA256Mismatch: the body's sha256 is not the signed one"
    url = urlsplit(target)
    query = "&".join(sorted(url.query.split("&"))) if url.query else ""
    canonical_headers = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed)
    canonical = "\n".join([method, url.path or "/", query, canonical_headers, ";".join(signed), payload])
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{keys[access]}".encode(), date), region), "s3"), "aws4_request")
    if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(),
                               fields.get("Signature", "")):
        return "SignatureDoesNotMatch: the request signature does not match the key pair"
    return None


class S3Standin(ThreadingHTTPServer):
    """PUT Object with a valid signature stores ``objects["bucket/key"]``; anything else is refused and recorded."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], keys: dict[str, str], region: str) -> None:
        super().__init__(address, _Handler)
        self.keys, self.region = dict(keys), region
        self.objects: dict[str, bytes] = {}
        self.refused: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> S3Standin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: S3Standin

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        problem = signature_problem("PUT", self.path, headers, body, self.server.keys, self.server.region)
        if problem:
            self.server.refused.append(problem)
            code = problem.split(":", 1)[0]
            text = f"<Error><Code>{code}</Code><Message>{problem}</Message></Error>".encode()
            self.send_response(403)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        self.server.objects[urlsplit(self.path).path.lstrip("/")] = body
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')  # noqa: S324 - S3's ETag is an MD5
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass
