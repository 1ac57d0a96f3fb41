"""Lock files: deterministic text, one-rule changes move only their layers, check / diff via the CLI."""

from __future__ import annotations

import copy
import difflib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import tedepr_fx
from tedepr_fx.cli import main
from tedepr_fx.lock import LockError, check_lock, load_lock, lock_path, parse_lock
from tedepr_fx.models import lenet5

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules" / "lenet5.yaml"
MODEL = "tedepr_fx.models:lenet5"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _rules() -> dict[str, Any]:
    """The policy with its ``extends`` resolved, as plain data."""
    data: dict[str, Any] = tedepr_fx.load_rules(RULES).model_dump(by_alias=True, exclude_none=True)
    return data


def _fc1_rank(rank: int) -> dict[str, Any]:
    data = copy.deepcopy(_rules())
    rule = next(r for r in data["rules"] if r["name"] == "fc1-tt")
    rule["factorize"]["rank"] = rank
    return data


@pytest.fixture(scope="module")
def lock_text() -> str:
    return tedepr_fx.plan(lenet5(), RULES).lock_text()


def _changed(a: str, b: str) -> list[str]:
    """The old-side lines that the unified diff of ``a`` -> ``b`` removes or replaces."""
    return [line[1:] for line in difflib.unified_diff(a.splitlines(), b.splitlines(), n=0, lineterm="")
            if line.startswith("-") and not line.startswith("---")]


def test_lock_text_is_deterministic(lock_text: str) -> None:
    again = tedepr_fx.plan(lenet5(), RULES).lock_text()
    assert again == lock_text
    lines = lock_text.splitlines()
    assert lines[0] == "# tedepr-fx lock 1"
    assert lines[1] == f"# tool: tedepr_fx {tedepr_fx.__version__}"
    assert lines[4] == "# model: tedepr_fx.models.lenet.LeNet5"
    assert lines[5] == "# inputs: float32[2,1,28,28]"
    layers = [line.split()[0] for line in lines if line.startswith("layer=")]
    assert layers == ["layer=conv1", "layer=conv2", "layer=fc1", "layer=fc2", "layer=fc3"]  # model order
    assert lines[-1].startswith("total layers=5 unmatched=0 dense=61470 ")
    fc1 = next(line for line in lines if line.startswith("layer=fc1 "))
    assert fc1.startswith("layer=fc1 rule=fc1-tt action=factorize format=tt modes=[10,8,5]->[6,5,4] "
                          "ranks=[1,6,6,1] dense=48000 stored=1920 kept=")
    assert "kept_source=predicted" in fc1


def test_lock_text_is_identical_in_another_process(lock_text: str) -> None:
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import tedepr_fx;"
            "from tedepr_fx.models import lenet5;"
            f"sys.stdout.write(tedepr_fx.plan(lenet5(), {str(RULES)!r}).lock_text())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=ROOT).stdout
    assert out == lock_text


def test_one_rule_change_moves_only_its_layer_totals_and_hash(lock_text: str) -> None:
    changed = tedepr_fx.plan(lenet5(), _fc1_rank(4)).lock_text()
    moved = _changed(lock_text, changed)
    assert [line.split(":")[0] if line.startswith("#") else line.split()[0] for line in moved] == [
        "# rules-sha256", "layer=fc1", "total"]
    new_fc1 = next(line for line in changed.splitlines() if line.startswith("layer=fc1 "))
    assert "ranks=[1,4,4,1]" in new_fc1


def test_diff_names_the_changed_layer(lock_text: str) -> None:
    a = tedepr_fx.plan(lenet5(), RULES)
    b = tedepr_fx.plan(lenet5(), _fc1_rank(4))
    text = tedepr_fx.diff(a, b)
    lines = text.splitlines()
    assert lines[0].startswith("fc1: ranks [1,6,6,1] -> [1,4,4,1], stored 1920 -> ")
    assert not any(line.startswith(("conv1", "conv2", "fc2", "fc3")) for line in lines)
    assert any(line.startswith("totals: stored 2497 -> 1537") for line in lines)
    assert tedepr_fx.diff(a, a) == "no layer changed\n"


def test_cli_lock_check_and_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "lenet.yaml"
    rules.write_text(yaml.safe_dump(_rules()))
    assert main(["plan", MODEL, "--rules", str(rules), "--lock"]) == 0
    written = tmp_path / "lenet.lock"
    assert lock_path(rules) == written and written.exists()
    assert main(["plan", MODEL, "--rules", str(rules), "--check-lock"]) == 0
    assert "OK" in capsys.readouterr().out

    # the policy moves: the committed lock no longer matches -> exit 1 with a short diff
    rules.write_text(yaml.safe_dump(_fc1_rank(4)))
    assert main(["plan", MODEL, "--rules", str(rules), "--check-lock"]) == 1
    out = capsys.readouterr().out
    assert "-layer=fc1 " in out and "+layer=fc1 " in out and "ranks=[1,4,4,1]" in out
    assert "layer=conv1" not in out
    assert check_lock(tedepr_fx.plan(lenet5(), _fc1_rank(4)), written) != []

    # a chosen path, then diff of the two locks
    other = tmp_path / "new.lock"
    assert main(["plan", MODEL, "--rules", str(rules), "--lock", "--lock-file", str(other)]) == 0
    assert main(["plan", MODEL, "--rules", str(rules), "--check-lock", "--lock-file", str(other)]) == 0
    capsys.readouterr()
    assert main(["plan", MODEL, "--rules", str(rules), "--lock-file", str(other)]) == 2
    assert "--lock-file needs --lock or --check-lock" in capsys.readouterr().err
    assert main(["diff", str(written), str(other)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fc1: ranks [1,6,6,1] -> [1,4,4,1]")


def test_rules_hash_is_checked_even_when_no_layer_moves(tmp_path: Path, lock_text: str) -> None:
    path = tmp_path / "lenet.lock"
    path.write_text(lock_text)
    data = _rules()
    data["scoring"]["trainability"]["iterations"] = 3  # changes no plan row, only the resolved rules
    moved = check_lock(tedepr_fx.plan(lenet5(), data), path)
    assert [line[:15] for line in moved if line[:1] in "+-" and line[:3] not in ("---", "+++")] == [
        "-# rules-sha256", "+# rules-sha256"]
    assert check_lock(tedepr_fx.plan(lenet5(), _rules()), path) == []


def test_version_difference_is_a_note_not_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    lock_text: str) -> None:
    path = tmp_path / "lenet.lock"
    text = "\n".join("# torch: 0.0.1" if line.startswith("# torch: ") else line
                     for line in lock_text.splitlines()) + "\n"
    path.write_text(text)
    assert main(["plan", MODEL, "--rules", str(RULES), "--check-lock", "--lock-file", str(path)]) == 0
    assert "note: torch differs" in capsys.readouterr().err


def test_missing_and_garbled_lock_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         lock_text: str) -> None:
    missing = tmp_path / "missing.lock"
    assert main(["plan", MODEL, "--rules", str(RULES), "--check-lock", "--lock-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such lock file" in err

    garbled = tmp_path / "garbled.lock"
    lines = lock_text.splitlines()
    lines[8] = lines[8].replace(" stored=", " stored ")  # line 9: a broken field
    garbled.write_text("\n".join(lines) + "\n")
    assert main(["plan", MODEL, "--rules", str(RULES), "--check-lock", "--lock-file", str(garbled)]) == 2
    err = capsys.readouterr().err
    assert f"{garbled}:9:" in err
    assert main(["diff", str(garbled), str(garbled)]) == 2

    truncated = tmp_path / "truncated.lock"
    truncated.write_text("\n".join(lines[:7]) + "\n")
    with pytest.raises(LockError, match="no totals line"):
        load_lock(truncated)
    with pytest.raises(LockError, match=r"x\.lock:1: not a tedepr-fx lock file"):
        parse_lock("hello\n", "x.lock")


def test_parse_round_trips_quoted_values() -> None:
    plan = tedepr_fx.plan(lenet5(), RULES)
    plan.rows[0].rule = 'odd "name" with spaces'
    lock = parse_lock(plan.lock_text())
    assert lock.fields[0]["rule"] == 'odd "name" with spaces'
    assert lock.fields[0]["layer"] == "conv1"
