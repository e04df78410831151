"""Redaction is linear in the text and every logged or stored value is capped."""
from __future__ import annotations

import io
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.logging import (
    MAX_TEXT, cap_text, configure_logging, get_logger, redact_text, safe_message,
)

# Fragments that make backtracking regexes scan far: runs of scheme letters, almost-URLs,
# almost-tokens, separators the patterns stop at.
FRAGMENTS = ["a", "A1+.-", "://", ":", "@", "/", " ", "x://u:", "hf_", "Bearer ", "\t",
             "password=", "sk-", "é", "\u202e"]


def _seconds(text: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        redact_text(text)
        best = min(best, time.perf_counter() - started)
    return best


def _growth(unit: str) -> float:
    """Time for 1 MB of `unit` repeated over time for 256 KB: 4 when linear, 16 when n^2.
    The best of three tries, as other processes on a shared machine only ever add time."""
    small = (unit * (256_000 // len(unit) + 1))[:256_000]
    large = (unit * (1_024_000 // len(unit) + 1))[:1_024_000]
    ratios = []
    for _ in range(3):
        ratios.append(_seconds(large) / max(_seconds(small), 1e-3))
        if ratios[-1] < 8:
            break
    return min(ratios)


def test_known_worst_cases_grow_linearly():
    for unit in ["a" * 1000, "a:" * 10, "x://", "x://u:" + "p" * 50, "hf_" + "a" * 100 + "_",
                 "Bearer " + " " * 100, "password=" * 3]:
        assert _growth(unit) < 8, unit


@settings(max_examples=10, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12).map("".join))
def test_any_repeated_pattern_grows_linearly(unit):
    assert _growth(unit) < 8


def test_megabyte_string_is_redacted_in_well_under_a_second():
    text = "k" * 1_000_000 + " postgresql://u:hunter2@h/db"
    started = time.perf_counter()
    out = redact_text(text)
    assert time.perf_counter() - started < 1.0
    assert "hunter2" not in out


def test_cap_marks_what_was_cut():
    assert cap_text("abc", 5) == "abc"
    assert cap_text("x" * 10, 4) == "xxxx... [cut 6 characters]"


def test_secret_at_the_cut_is_redacted_before_cutting():
    text = "y" * (MAX_TEXT - 10) + " https://u:topsecretpassword@host/"
    assert "topsec" not in safe_message(text)


def test_log_values_are_capped_and_redacted():
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    get_logger("t").warning("big", model_path="p" * 200_000, url="postgresql://u:hunter2@h/db")
    line = stream.getvalue()
    assert len(line) < 2 * MAX_TEXT and "[cut 195904 characters]" in line
    assert "hunter2" not in line


def test_console_lines_escape_terminal_controls_and_tracebacks_keep_their_end():
    stream = io.StringIO()
    configure_logging("INFO", "console", stream=stream)
    log = get_logger("t")
    log.warning("run.failed", name="evil\x1b[2J\u202e")
    try:
        raise ValueError("x" * 50_000 + " the end")
    except ValueError:
        log.exception("crashed")
    out = stream.getvalue()
    assert "\x1b" not in out and "\u202e" not in out and "evil\\x1b[2J\\u202e" in out
    assert "the end" in out and "[cut " in out and len(out) < 20_000
