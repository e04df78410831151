import pytest

from db.queries import QUERIES, parse_queries


def test_named_queries_are_parsed_without_comments():
    assert QUERIES["claim_runs"].startswith("SELECT id, name, config::text AS config_text")
    assert QUERIES["claim_runs"].endswith("FROM claim_runs($1, $2, $3)")
    assert all(not q.lstrip().startswith("--") and q for q in QUERIES.values())


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
