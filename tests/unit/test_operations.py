"""pyinfra-testing cases for ``portable_k3s.operations``: one test per file in
``operations/<module>.<operation>/``.

A case gives the operation's arguments, the facts it reads and the exact commands it yields (or its noop
text, or the exception it raises). Fact keys are ``<last module segment>.<FactClass>``, the same spelling
for our facts (``ssh.SshdHardening``, ``timesync.Timesyncd``) and pyinfra's (``deb.DebPackages``,
``files.File``, ``server.Date``); a fact read with arguments is keyed by its argument string under that,
e.g. ``path=/etc/ssh/sshd_config.d/01-portable-k3s-hardening.conf``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from unittest import mock

from pyinfra_testing.operations import make_operation_tests

import portable_k3s.operations as operations_pkg

BASE_IMPORT_PATH = "portable_k3s.operations"
TESTS_BASE = Path(__file__).parent / "operations"

for op_path in sorted(d.name for d in TESTS_BASE.iterdir() if d.is_dir()):
    locals()[op_path] = make_operation_tests(BASE_IMPORT_PATH, op_path, TESTS_BASE / op_path)


def test_every_operation_has_cases() -> None:
    """Each @operation of the package has a case directory with at least one case file."""
    expected = set()
    for module_info in pkgutil.iter_modules(operations_pkg.__path__):
        module = importlib.import_module(f"{BASE_IMPORT_PATH}.{module_info.name}")
        for name, func in inspect.getmembers(module, callable):
            if hasattr(func, "_inner") and getattr(func, "__module__", None) == module.__name__:
                expected.add(f"{module_info.name}.{name}")
    assert expected, "no operations found"
    with_cases = {d.name for d in TESTS_BASE.iterdir() if d.is_dir() and any(d.glob("*.yaml"))}
    assert expected <= with_cases, f"operations without cases: {sorted(expected - with_cases)}"


def _run_operation(op, facts: dict, **kwargs) -> list:
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra_testing.util import FakeState, create_host

    state = FakeState()
    host = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(host):
        return list(op._inner(**kwargs))


def test_hardened_upload_goes_through_a_location_a_sudo_login_user_can_write() -> None:
    from pyinfra.connectors.ssh import SSHConnector
    from pyinfra.connectors.util import CommandOutput

    from portable_k3s.operations import ssh

    facts = {
        "ssh.SshdHardening": {
            f"path={ssh.HARDENING_DROPIN}": {
                "dropin_sha256": None,
                "includes_dropins": True,
                "login_user": "admin",
                "authorized_keys": 1,
            }
        }
    }
    upload = _run_operation(ssh.hardened, facts)[0]

    # What pyinfra's SSH connector does with this upload for a sudo deploy (no network involved).
    connector = SSHConnector.__new__(SSHConnector)
    connector.host = mock.Mock(get_temp_filename=lambda *_a, **_k: "/tmp/pyinfra-0123")
    sftp_targets: list[str] = []
    with (
        mock.patch.object(SSHConnector, "_put_file", lambda self, src, dest: sftp_targets.append(dest)),
        mock.patch.object(SSHConnector, "run_shell_command", return_value=(True, CommandOutput([]))),
    ):
        connector.put_file(upload.src, upload.dest, remote_temp_filename=upload.remote_temp_filename, _sudo=True)
    assert len(sftp_targets) == 1
    assert not sftp_targets[0].startswith("/etc/"), sftp_targets[0]


def test_timesyncd_quotes_the_drop_in_directory() -> None:
    from portable_k3s.operations import timesync

    path = "/etc/systemd/timesyncd.conf.d/site a/portable-k3s.conf"
    facts = {
        "timesync.Timesyncd": {
            f"path={path}": {"container": None, "config_sha256": None, "enabled": True, "active": True}
        }
    }
    first = _run_operation(timesync.timesyncd, facts, servers=["ntp.example"], path=path)[0]
    text = first if isinstance(first, str) else first.get_raw_value()
    assert text == "mkdir -p '/etc/systemd/timesyncd.conf.d/site a'"
