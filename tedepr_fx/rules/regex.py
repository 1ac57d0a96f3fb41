"""The ``regex:`` selector, matched in linear time by RE2.

Python's ``re`` backtracks: ``(a+)+$`` against a 35-character layer name takes hours.
Rule regexes are matched by RE2 (the ``google-re2`` package), whose time is linear in the
length of the name whatever the pattern, so no rule file can hang ``plan`` or
``transform``. RE2 has Python's syntax except the constructs that need backtracking:
lookaround (``(?=...)``, ``(?!...)``, ``(?<=...)``) and backreferences (``\\1``); a rule
using them is refused with a located error.

Example
-------
>>> pattern = compile_rule_regex("(a+)+$")
>>> pattern.fullmatch("a" * 35 + "b") is None
True
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import re2


class NameMatcher(Protocol):
    """What the selector needs of a compiled pattern."""

    def fullmatch(self, text: str) -> Any: ...


def compile_rule_regex(pattern: str) -> NameMatcher:
    """Compile ``pattern`` for RE2; ``ValueError`` with the reason when it cannot be used.

    Python's parser checks the syntax first, so a typo gets Python's familiar message
    (``missing ), unterminated subpattern at position 3``).
    """
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"is not a valid regular expression ({error})") from None
    options = re2.Options()
    options.log_errors = False  # RE2 would also print each refusal on stderr
    try:
        matcher: NameMatcher = re2.compile(pattern, options)
    except re2.error as error:
        reason = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else str(error)
        raise ValueError(
            f"uses a construct the linear-time matcher (RE2) does not support ({reason}); "
            "lookaround and backreferences are not available in rule regexes") from None
    return matcher
