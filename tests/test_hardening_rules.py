"""Issue 15, hangs and crashes in rule loading: backtracking regexes, non-regular files, huge
files, symlink loops in ``extends`` and NUL bytes. Each is one located line and exit 2."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tedepr_fx.cli import main
from tedepr_fx.errors import RuleError
from tedepr_fx.rules import load_rules
from tedepr_fx.rules.limits import MAX_BYTES

GOOD = "version: 1\nrules:\n  - name: fc\n    match: {type: Linear}\n    action: keep\n"
posix = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs, /dev/zero and symlinks")


def check(path: Path | str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``tedepr-fx check path``: exit 2 and one located error line, the lines printed."""
    assert main(["check", str(path)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"INVALID {path}: 1 error(s)" and len(lines) == 2, lines
    return lines


def test_a_backtracking_regex_matches_in_linear_time():
    rules = load_rules({"version": 1, "rules": [{"name": "evil", "match": {"regex": "(a+)+$"}, "action": "keep"}]})
    start = time.perf_counter()
    assert rules.first_match("a" * 35 + "b", ["Linear"], 100) is None  # Python's re: hours
    assert rules.first_match("a" * 35, ["Linear"], 100) is not None
    assert time.perf_counter() - start < 1.0


def test_a_regex_that_needs_backtracking_is_a_located_rule_error():
    text = "version: 1\nrules:\n  - name: look\n    match: {regex: '(?!head).*'}\n    action: keep\n"
    with pytest.raises(RuleError, match=r":4:20: rules\[0\]\.match\.regex: uses a construct the linear-time "
                                        r"matcher \(RE2\) does not support"):
        load_rules(text)


@posix
def test_check_refuses_a_fifo_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "rules.yaml"
    os.mkfifo(fifo)
    result: list[list[str]] = []
    worker = threading.Thread(target=lambda: result.append(check(fifo, capsys)), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader before failing
        with open(fifo, "w"):
            pass
        pytest.fail("check blocked on a FIFO")
    assert result[0][1] == f"  {fifo}: is not a regular file (a FIFO); a rule file must be one"


@posix
def test_check_refuses_dev_zero(capsys):
    assert check("/dev/zero", capsys)[1] == "  /dev/zero: is not a regular file (a character device); a rule file must be one"


def test_check_refuses_a_file_over_the_size_limit_before_reading_it(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: nothing to read if it is refused first
    assert check(big, capsys)[1] == f"  {big}: {MAX_BYTES + 1} bytes is too large for a rule file (at most {MAX_BYTES}); refused"


@posix
def test_a_symlink_loop_in_extends_is_a_located_error(tmp_path, capsys):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    child = tmp_path / "child.yaml"
    child.write_text("version: 1\nextends: a.yaml\n" + GOOD.split("\n", 1)[1])
    line = check(child, capsys)[1]
    assert line.startswith(f"  {child}:2:10: extends: base file 'a.yaml' cannot be resolved"), line


@posix
def test_a_rule_file_that_is_a_symlink_loop_is_a_located_error(tmp_path, capsys):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    assert check(tmp_path / "a.yaml", capsys)[1].startswith(f"  {tmp_path / 'a.yaml'}: cannot be read")


def test_a_nul_byte_is_a_located_error(tmp_path, capsys):
    path = tmp_path / "nul.yaml"
    path.write_bytes(GOOD.replace("name: fc", "name: f\0c").encode())
    assert check(path, capsys)[1] == (f"  {path}:3:12: invalid YAML: character U+0000 is not allowed in YAML "
                                      "text (a binary file?)")


def test_a_nul_byte_in_yaml_text_is_a_located_rule_error():
    with pytest.raises(RuleError, match=r"<string>:3:12: invalid YAML: character U\+0000"):
        load_rules(GOOD.replace("name: fc", "name: f\0c"))


def test_bytes_that_are_not_utf8_are_located(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("name: fc", "name: f\xe9c").encode("latin-1"))
    assert check(path, capsys)[1] == f"  {path}:3:12: is not UTF-8 text (invalid continuation byte)"


def test_a_directory_is_refused(tmp_path, capsys):
    assert check(tmp_path, capsys)[1] == f"  {tmp_path}: is a directory, not a rule file"
