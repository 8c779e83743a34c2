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
