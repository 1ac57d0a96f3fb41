"""The shipped policies are package data: found by name, inside the wheel, and run by the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tedepr_fx import demo, policies

REPO = Path(__file__).resolve().parent.parent


def test_path_finds_a_shipped_policy_by_name():
    assert policies.path("lenet") == policies.path("lenet.yaml")
    assert policies.path("lenet").read_text().startswith("# yaml-language-server")


def test_unknown_policy_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="no shipped policy 'lenett'; shipped: lenet, lenet5, lstm"):
        policies.path("lenett")


def test_the_demo_reads_the_shipped_lenet_policy():
    assert demo.RULES == policies.path("lenet")


def test_rules_folder_of_a_clone_is_the_package_data():
    assert sorted(p.name for p in (REPO / "rules").glob("*.yaml")) == [f"{n}.yaml" for n in policies.names()]
    assert (REPO / "rules").resolve() == policies.path("lenet").parent.resolve()


def _build_wheel(out: Path) -> Path:
    """The wheel of this tree, built with the installed setuptools (no download, a few seconds)."""
    pytest.importorskip("setuptools")
    src = out / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out / "dist")], check=True)
    (wheel,) = (out / "dist").glob("tedepr_fx-*.whl")
    return wheel


def test_wheel_holds_the_policies_and_declares_only_imported_dependencies(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert {f"tedepr_fx/policies/{n}.yaml" for n in policies.names()} <= names
    assert "tedepr_fx/py.typed" in names
    assert not any(n.startswith(("rules/", "tests/", "benchmarks/")) for n in names)
    runtime = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requires}
    assert runtime.isdisjoint({"opt_einsum", "networkx", "tensorly"}), runtime


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bash script")
def test_demo_runs_from_an_installed_wheel_outside_the_clone():
    # the same script as the CI step: fresh venv, torch==2.13.0, the wheel and its dependencies
    result = subprocess.run(["bash", str(REPO / ".ci" / "wheel_demo"), sys.executable], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test accuracy after 1 epoch(s)" in result.stdout
