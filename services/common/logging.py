"""structlog setup: JSON by default, readable in a terminal, secrets redacted everywhere.

Redaction runs as the last processor before rendering, so nothing bound by any caller
(a database URL, an API key, a token) reaches the output in clear.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

# Every pattern is linear in the text: a match can only start where its first part starts (the
# lookbehind stops the scheme from being tried inside a run of letters) and every repetition
# that can fail and backtrack is bounded, so a megabyte string costs a few scans, never n^2.
_URL_PASSWORD = re.compile(
    r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,31}://)"
    r"(?P<user>[^:/@\s]{0,1024}):(?P<pw>[^@/\s]{1,1024})@"
)
_SECRET_QUERY = re.compile(
    r"(?P<key>(?:password|passwd|pwd|token|api[_-]?key|secret|signature|x-amz-signature|"
    r"x-amz-credential|access[_-]?key[_-]?id|sig)=)[^&\s\"']+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>Bearer\s{1,16})[A-Za-z0-9._~+/=-]+")
_KNOWN_TOKENS = re.compile(r"\b(?:hf_[A-Za-z0-9]{10,}|rpa_[A-Za-z0-9]{10,}|sk-[A-Za-z0-9]{10,})\b")
_SECRET_KEYS = re.compile(r"(password|secret|token|api_key|apikey|credential|private_key)", re.I)

REDACTED = "***"
MAX_TEXT = 4096  # characters of one stored error message or logged value


MAX_TRACEBACK = 16 * 1024


def cap_text(text: str, limit: int = MAX_TEXT, *, keep_end: bool = False) -> str:
    """`text` cut to `limit` characters, with a marker saying how much was cut; `keep_end`
    keeps the last characters instead (a traceback's end says what failed)."""
    if len(text) <= limit:
        return text
    if keep_end:
        return f"[cut {len(text) - limit} characters] ...{text[-limit:]}"
    return f"{text[:limit]}... [cut {len(text) - limit} characters]"


def safe_message(text: str, limit: int = MAX_TEXT) -> str:
    """What may be stored or logged from untrusted or unexpected text: redacted, then capped
    (in that order, so a cut never leaves half a secret the patterns no longer recognise)."""
    return cap_text(redact_text(text), limit)


# What must not reach a terminal raw: C0/C1 controls and DEL (escape sequences, BEL, newlines),
# bidirectional overrides and isolates (U+202E makes text read backwards), zero-width and
# line-separator characters.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]"
)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str, *, keep_newlines: bool = False) -> str:
    """Untrusted text (a run name, an error message) as one printable line: every control,
    bidi or invisible character written as its \\x../\\u.... escape (newlines kept on
    request, for tracebacks)."""
    if keep_newlines:
        return "\n".join(_UNPRINTABLE.sub(_escape, line) for line in text.split("\n"))
    return _UNPRINTABLE.sub(_escape, text)


def redact_text(text: str) -> str:
    """Remove passwords in URLs, secret query parameters, bearer tokens and known key formats."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _SECRET_QUERY.sub(lambda m: f"{m['key']}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m['key']}{REDACTED}", text)
    return _KNOWN_TOKENS.sub(REDACTED, text)


def redact(value: Any, key: str | None = None) -> Any:
    if key is not None and _SECRET_KEYS.search(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, str):
        return safe_message(value)
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _redact_processor(_logger, _method, event_dict: dict) -> dict:
    traceback = event_dict.pop("exception", None)
    event_dict = {k: redact(v, k) for k, v in event_dict.items()}
    if traceback is not None:
        event_dict["exception"] = cap_text(redact_text(traceback), MAX_TRACEBACK, keep_end=True)
    return event_dict


def _terminal_processor(_logger, _method, event_dict: dict) -> dict:
    """Console output goes to a person's terminal: no escape sequences from logged values."""
    return {k: terminal_safe(v, keep_newlines=k == "exception") if isinstance(v, str) else v
            for k, v in event_dict.items()}


def configure_logging(level: str = "INFO", fmt: str = "auto", stream=None) -> None:
    """fmt: 'json', 'console', or 'auto' (console on a terminal, JSON otherwise)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            *([_terminal_processor] if fmt == "console" else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None, **bound):
    return structlog.get_logger(name).bind(**bound)
