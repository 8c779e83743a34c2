"""The host's name."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationValueError, QuoteString, StringCommand

from ..facts.hostname import NodeName
from .util import host_operation, shared_fact


@host_operation(changes=(NodeName,))
def named(hostname: str):
    """
    Give the host this name, now and at boot (``hostnamectl``, or ``/etc/hostname`` and ``hostname`` where there
    is no hostnamectl). One command to check it (``NodeName``, readable ahead with ``prefetch.facts``).

    + hostname: the host name (an RFC 1123 label, or a dotted name of them)

    **Example:**

    .. code:: python

        hostname.named(name="Set the hostname", hostname="t420")
    """
    labels = hostname.split(".")
    if not hostname or not all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels):
        raise OperationValueError(f"hostname: {hostname!r} (expected a host name like t420)")
    if shared_fact(host, NodeName) == hostname:
        host.noop(f"the hostname is {hostname}")
        return
    name = QuoteString(hostname)
    yield StringCommand(
        "if command -v hostnamectl >/dev/null 2>&1 && hostnamectl set-hostname", name, "2>/dev/null; then :;",
        "else echo", name, "> /etc/hostname && hostname", name, "; fi",
    )
