"""The lab's public apps, served for real: certificates from the lab's own CA, a first page, the command to fetch it.

CERTIFICATE STAND-IN: on a real cluster cert-manager issues each app's certificate (the ClusterIssuer the deploy
renders, Let's Encrypt by HTTP-01 through the entrance). cert-manager cannot run in the lab (its chart is not
rendered by the lab's k3s), so ``serve_apps`` does what it would do for every Ingress with TLS: a certificate for the
Ingress's hosts, signed by the lab's CA (``<state_dir>/ca/ca.pem``), in the Secret the Ingress names. Everything else
on the path is real: the entrance's nginx, the tailnet, Traefik on the nodes and the app's pod.
"""

from __future__ import annotations

import datetime
import json
import os
import runpy
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .core import Lab, LabError, log

CA_NAME = "portable-k3s lab CA"
ISSUED_BY = "portable-k3s.lab/issued-by"  # the Secret annotation naming the CA's fingerprint
STATIC_KINDS = ("static", "hugo")
FIRST_PAGE = (
    "<!doctype html>\n<title>{host}</title>\n<h1>{host}</h1>\n<p>Served from home by the portable-k3s lab.</p>\n"
)


def ca_dir(lab: Lab) -> Path:
    return lab.state_dir / "ca"


def lab_ca(lab: Lab) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The lab's CA (made once per lab: ``ca.pem``, and ``ca.key`` 0600)."""
    directory = ca_dir(lab)
    cert_file, key_file = directory / "ca.pem", directory / "ca.key"
    if not cert_file.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    loaded = serialization.load_pem_private_key(key_file.read_bytes(), None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise LabError(f"{key_file}: not the lab CA's EC key")
    return cert, loaded


def issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: list[str]) -> tuple[bytes, bytes]:
    """A serving certificate for ``hosts`` signed by the CA: (certificate + CA chain PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    return chain, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())


def kubectl(lab: Lab, server: str, args: str, input: str | None = None, check: bool = True) -> str:  # noqa: A002
    """``k3s kubectl ARGS`` on the server (stdin: ``input``); its output."""
    return lab.ssh(server, f"k3s kubectl {args}", input=input, check=check, timeout=120).stdout


def server_name(lab: Lab) -> str:
    found = next((h.name for h in lab.hosts() if "k3s_servers" in h.groups), None)
    if found is None:
        raise LabError("the lab has no k3s server")
    return found


def wait_for_ingresses(lab: Lab, within: float = 300) -> list[dict[str, Any]]:
    """Every Ingress the manifests in k3s's auto-deploy directory declare, once k3s has applied them all."""
    server = server_name(lab)
    text = lab.ssh(server, "for f in /var/lib/rancher/k3s/server/manifests/*.yaml; do cat \"$f\"; printf '\\n---\\n'; "
                           "done", timeout=60).stdout
    wanted = {(doc["metadata"].get("namespace", "default"), doc["metadata"]["name"])
              for doc in yaml.safe_load_all(text) if isinstance(doc, dict) and doc.get("kind") == "Ingress"}
    deadline = time.monotonic() + within
    while True:
        ingresses = json.loads(kubectl(lab, server, "get ingress -A -o json"))["items"]
        found = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in ingresses}
        if wanted <= found:
            return ingresses
        if time.monotonic() > deadline:
            missing = ", ".join(f"{ns}/{name}" for ns, name in sorted(wanted - found))
            raise LabError(f"k3s did not apply these Ingresses within {within:.0f} s: {missing}")
        time.sleep(2)


def issue_certificates(lab: Lab) -> list[str]:
    """For every Ingress's TLS entry, a certificate from the lab's CA in the Secret it names, unless one for the
    same hosts from this CA is there. Returns the hosts issued for."""
    server = server_name(lab)
    ca, ca_key = lab_ca(lab)
    fingerprint = ca.fingerprint(hashes.SHA256()).hex()[:32]
    ingresses = wait_for_ingresses(lab)
    secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in json.loads(
        kubectl(lab, server, "get secret -A --field-selector type=kubernetes.io/tls -o json"))["items"]}
    issued: list[str] = []
    for ingress in ingresses:
        namespace = ingress["metadata"]["namespace"]
        for entry in ingress.get("spec", {}).get("tls") or []:
            hosts, name = sorted(entry.get("hosts") or []), entry.get("secretName")
            if not hosts or not name:
                continue
            current = secrets.get((namespace, name), {}).get("metadata", {}).get("annotations", {})
            if current.get(ISSUED_BY) == f"{fingerprint}:{','.join(hosts)}":
                continue
            chain, key = issue(ca, ca_key, hosts)
            secret: dict[str, Any] = {
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": namespace,
                             "annotations": {ISSUED_BY: f"{fingerprint}:{','.join(hosts)}"}},
                "stringData": {"tls.crt": chain.decode(), "tls.key": key.decode()},
            }
            kubectl(lab, server, "apply -f - >/dev/null", input=json.dumps(secret))
            issued += hosts
    return issued


def first_pages(lab: Lab, within: float = 300) -> list[str]:
    """Put a first page into every static app's volume that has none (as its owner would upload the site), once
    its pod runs. Returns the hosts of the apps that got one."""
    server = server_name(lab)
    deadline = time.monotonic() + within
    done: list[str] = []
    pending = None
    while pending is None or (pending and time.monotonic() < deadline):
        pods = json.loads(kubectl(lab, server, "get pods -A -l app.kubernetes.io/name -o json"))["items"]
        ingresses = {i["metadata"]["namespace"]: i for i in json.loads(
            kubectl(lab, server, "get ingress -A -o json"))["items"]}
        images = {p["metadata"]["namespace"]: p for p in pods if p["metadata"]["namespace"].startswith("app-")}
        pending = []
        for namespace, pod in images.items():
            image = pod["spec"]["containers"][0]["image"]
            if namespace not in ingresses or not image.startswith("nginx:") or namespace in done:
                continue
            host = ingresses[namespace]["spec"]["rules"][0]["host"]
            ready = any(c.get("ready") for c in pod.get("status", {}).get("containerStatuses") or [])
            if not ready:
                pending.append(namespace)
                continue
            page = FIRST_PAGE.format(host=host)
            index = "/usr/share/nginx/html/index.html"
            target = f"-n {namespace} {pod['metadata']['name']}"
            # `kubectl exec -i` may deliver no stdin at all: an empty page is written again, and read back.
            for _ in range(5):
                kubectl(lab, server, f"exec -i {target} -- sh -c 'test -s {index} || cat > {index}'", input=page)
                if kubectl(lab, server, f"exec {target} -- cat {index}", check=False).strip():
                    break
                time.sleep(1)
            else:
                raise LabError(f"could not write the first page of {namespace} (kubectl exec delivered no input)")
            done.append(namespace)
        if pending:
            time.sleep(3)
    if pending:
        raise LabError(f"the static apps in {', '.join(pending)} did not start within {within:.0f} s")
    return done


def fetch_command(lab: Lab, hostname: str) -> str:
    """The command that fetches ``hostname`` through the lab's entrance from this machine, as the internet would."""
    entrance = next(h.address for h in lab.hosts() if "entrance" in h.groups)
    return (f"curl --resolve {hostname}:443:{entrance} --cacert {ca_dir(lab) / 'ca.pem'} https://{hostname}/")


def public_static_hostnames(catalog: str | Path) -> list[str]:
    """The hostnames of the catalog's public static apps (kind static or hugo), in catalog order."""
    apps = runpy.run_path(str(catalog)).get("apps") or []
    return [app["hostname"] for app in apps if isinstance(app, dict) and app.get("public") and app.get("hostname")
            and (app.get("kind") or app.get("name")) in STATIC_KINDS]


def serve_apps(lab: Lab) -> list[str]:
    """Certificates for every Ingress, first pages for the static apps; log what was done."""
    issued = issue_certificates(lab)
    if issued:
        log(f"issued certificates from the lab CA for {', '.join(issued)}")
    first_pages(lab)
    return issued
