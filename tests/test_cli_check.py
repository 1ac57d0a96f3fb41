"""``tedepr-fx check`` and ``tedepr-fx schema``: output, exit codes, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tedepr_fx.cli import COMMANDS, main
from tedepr_fx.rules import RuleSet

GOOD = "version: 1\nrules:\n  - name: fc\n    match: {type: Linear}\n    action: keep\n"
REPO = Path(__file__).resolve().parent.parent


def test_check_ok(tmp_path, capsys):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out == f"OK {path}\n"


def test_check_reports_located_errors_and_exits_2(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("action: keep", "action: fold") + "extra: 1\n")
    assert main(["check", str(good), str(bad)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"OK {good}",
        f"INVALID {bad}: 2 error(s)",
        f"  {bad}:5:13: rules[0].action: must be 'factorize', 'prune' or 'keep'; got 'fold'",
        f"  {bad}:6:1: extra: unknown key 'extra'",
    ]


def test_check_missing_unreadable_and_broken_files(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules: [\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    missing = tmp_path / "missing.yaml"
    assert main(["check", str(missing), str(tmp_path), str(broken), str(binary)]) == 2
    out = capsys.readouterr().out
    assert f"  {missing}: no such file" in out
    assert f"  {tmp_path}: is a directory, not a rule file" in out
    assert f"  {broken}:3:1: invalid YAML:" in out
    assert f"  {binary}:1:1: is not UTF-8 text (invalid start byte)" in out
    assert "Traceback" not in out


def test_bad_arguments_exit_2_without_traceback(capsys):
    assert main([]) == 2
    assert main(["check"]) == 2
    assert main(["nonsense"]) == 2
    assert "usage: tedepr-fx" in capsys.readouterr().err


def test_schema_is_the_generated_one(capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed.pop("$schema").startswith("https://json-schema.org/")
    assert printed == RuleSet.model_json_schema()
    shipped = json.loads((REPO / "docs" / "rules.schema.json").read_text())
    shipped.pop("$schema")
    assert shipped == printed, "docs/rules.schema.json is stale: tedepr-fx schema > docs/rules.schema.json"


def test_commands_are_a_registry():
    assert [c.name for c in COMMANDS][:2] == ["check", "schema"]


def test_check_and_schema_do_not_import_torch(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    code = (
        "import sys\n"
        "from tedepr_fx.cli import main\n"
        f"assert main(['check', {str(path)!r}]) == 0\n"
        "assert main(['schema']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
