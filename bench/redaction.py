"""Log redaction cost against the text's size: `services.common.logging.redact_text` against
the same redaction with the URL-password pattern it replaced (quadratic: its scheme part was
tried, and scanned to the end of a run of letters, at every position), on the same texts in the
same run.

    python bench/redaction.py            # 10 KB .. 1 MB (the old pattern only up to 40 KB)
    python bench/redaction.py --tiny     # a seconds-long smoke run (CI)

Prints milliseconds per size and the growth from one size to the next: about 4 for each 4x
step when linear, 16 when quadratic.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

# Run as a script, bench/ would be first on sys.path and its queue.py would shadow the standard
# library's: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from services.common import logging as redaction  # noqa: E402
from services.common.logging import redact_text  # noqa: E402

BEFORE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")


def redact_before(text: str) -> str:
    """redact_text as it was: the old URL pattern, then the other patterns."""
    text = BEFORE.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = redaction._SECRET_QUERY.sub(lambda m: f"{m['key']}***", text)
    text = redaction._BEARER.sub(lambda m: f"{m['key']}***", text)
    return redaction._KNOWN_TOKENS.sub("***", text)


TEXTS = {  # the worst case of the old pattern, and a log line's mix
    "letters": "a",
    "log line": "GET https://u:pw@host/a?token=abc&x=1 Bearer eyJ.x.y run=42 ",
}


def _best_ms(fn, text: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small sizes, for CI")
    args = parser.parse_args()
    sizes = [2_500, 10_000] if args.tiny else [10_000, 40_000, 160_000, 640_000, 1_000_000]
    before_max = 10_000 if args.tiny else 40_000
    for name, unit in TEXTS.items():
        print(f"{name}:")
        previous: dict[str, float] = {}
        for size in sizes:
            text = (unit * (size // len(unit) + 1))[:size]
            row = {"redact_text": _best_ms(redact_text, text)}
            if size <= before_max:
                row["before"] = _best_ms(redact_before, text, repeat=1)
            cells = []
            for key, ms in row.items():
                growth = f" (x{ms / previous[key]:.1f})" if key in previous else ""
                cells.append(f"{key} {ms:9.2f} ms{growth}")
                previous[key] = ms
            if "before" in row:
                cells.append(f"before/redact_text {row['before'] / row['redact_text']:.0f}x")
            print(f"  {size:>9,} chars: " + ", ".join(cells))


if __name__ == "__main__":
    main()
