"""The ``>>>`` examples in the docstrings of the public modules run and give what they show.

Part of the README's test command, so CI runs them without ``--doctest-modules``.
Modules are found on disk: every module of ``tedepr_fx`` whose dotted name has
no private (``_``-prefixed) part and whose source holds a ``>>>`` example, so a
new example is covered without editing this file. Each module is one test.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

import tedepr_fx

PACKAGE_DIR = Path(tedepr_fx.__file__).resolve().parent


def _public_modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if any(part.startswith("_") for part in parts):
            continue
        if ">>>" in path.read_text(encoding="utf-8"):
            names.append(".".join(parts))
    return names


MODULES = _public_modules_with_examples()


def test_examples_are_found() -> None:
    assert MODULES, f"no public module under {PACKAGE_DIR} has a >>> example"


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    out = io.StringIO()
    runner = doctest.DocTestRunner(verbose=False)
    for test in doctest.DocTestFinder().find(module, name):  # each test gets a copy of the globals
        runner.run(test, out=out.write)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted > 0, f"{name}: no doctest example was collected"
    assert failed == 0, f"{name}: {failed} of {attempted} examples failed\n{out.getvalue()}"
