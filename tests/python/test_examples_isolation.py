"""The examples' one-process-per-method runner (examples/seed_report.py, run_isolated).

Regression: a child killed by a signal (here: SIGABRT; in the field: a shared library replaced under a
running process) used to leave the parent blocked on the result queue forever.
"""

from __future__ import annotations

import operator
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import seed_report  # noqa: E402


def test_the_child_answers():
    assert seed_report.run_isolated("add", operator.add, (2, 3), threads=1) == 5


def test_an_exception_in_the_child_is_reported_with_its_message():
    with pytest.raises(RuntimeError, match=r"parse: the training process failed: ValueError: invalid literal"):
        seed_report.run_isolated("parse", int, ("x",), threads=1)


def test_a_child_killed_by_a_signal_is_reported_not_waited_on():
    with pytest.raises(RuntimeError, match=r"abort: the training process died without an answer \(exit code -6\)"):
        seed_report.run_isolated("abort", os.abort, (), threads=1, poll_s=0.5)
