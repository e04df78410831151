"""Named queries parsed once from db/queries.sql; code says QUERIES["claim_runs"]."""
from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^-- name: (?P<name>\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    for match, following in zip(matches, matches[1:] + [None]):
        body = text[match.end(): following.start() if following else len(text)]
        sql = "\n".join(line for line in body.splitlines() if not line.startswith("--")).strip()
        if match["name"] in queries:
            raise ValueError(f"query {match['name']!r} is defined twice")
        queries[match["name"]] = sql.rstrip(";")
    return queries


QUERIES = parse_queries((Path(__file__).with_name("queries.sql")).read_text())
