"""pyinfra-testing cases for ``portable_k3s.facts``: one test per file in ``facts/<module>.<FactClass>/``.

A fact case gives the fact's argument, the exact command it runs, the raw output and the parsed result.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra_testing.facts import make_fact_tests

BASE_IMPORT_PATH = "portable_k3s.facts"
TESTS_BASE = Path(__file__).parent / "facts"

for fact_path in sorted(d.name for d in TESTS_BASE.iterdir() if d.is_dir()):
    locals()[fact_path] = make_fact_tests(BASE_IMPORT_PATH, fact_path, TESTS_BASE / fact_path)


def test_every_fact_has_cases() -> None:
    """Each fact class of the package has a case directory with at least one case file."""
    import importlib
    import inspect
    import pkgutil

    from pyinfra.api import FactBase

    import portable_k3s.facts as facts_pkg

    expected = set()
    for module_info in pkgutil.iter_modules(facts_pkg.__path__):
        module = importlib.import_module(f"{BASE_IMPORT_PATH}.{module_info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, FactBase) and cls is not FactBase and cls.__module__ == module.__name__:
                expected.add(f"{module_info.name}.{name}")
    assert expected, "no fact classes found"
    with_cases = {d.name for d in TESTS_BASE.iterdir() if d.is_dir() and any(d.glob("*.yaml"))}
    assert expected <= with_cases, f"facts without cases: {sorted(expected - with_cases)}"


def test_sshd_hardening_counts_the_keys_of_the_user_it_runs_as_or_of_the_sudo_user(tmp_path: Path) -> None:
    """A real shell: without sudo the keys are in ``$HOME`` (no passwd lookup); under sudo they are the sudo
    user's, from the passwd database."""
    import os
    import pwd
    import subprocess

    from portable_k3s.facts.ssh import SshdHardening

    command = SshdHardening().command().get_raw_value()
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh/authorized_keys").write_text("# a comment\nssh-ed25519 AAAA one\n\nssh-ed25519 AAAA two\n")
    env = {key: value for key, value in os.environ.items() if key != "SUDO_USER"}

    def read(**extra: str) -> dict:
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env={**env, **extra}, check=True)
        return SshdHardening().process(out.stdout.splitlines())

    me = pwd.getpwuid(os.getuid())
    assert read(HOME=str(tmp_path))["authorized_keys"] == 2
    assert read(HOME=str(tmp_path))["login_user"] == me.pw_name
    under_sudo = read(HOME=str(tmp_path), SUDO_USER=me.pw_name)  # the home from passwd, not $HOME
    assert under_sudo["login_user"] == me.pw_name
    keys = [Path(me.pw_dir, ".ssh", name) for name in ("authorized_keys", "authorized_keys2")]
    expected = sum(
        sum(1 for line in key.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#"))
        for key in keys if key.is_file()
    )
    assert under_sudo["authorized_keys"] == expected
