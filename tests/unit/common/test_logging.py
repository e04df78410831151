import io
import json

from services.common.logging import configure_logging, get_logger, redact, redact_text


def test_redacts_url_passwords_keys_and_tokens():
    text = ("postgresql://app:s3cr3t@db:5432/x?sslmode=require "
            "https://u:pw@host/a?token=abc&x=1 Bearer eyJhbGciOi.x.y hf_abcdefghijklmnop "
            "rpa_ABCDEFGHIJKLMNOP1234 api_key=zzz")
    out = redact_text(text)
    for secret in ("s3cr3t", ":pw@", "abc&", "eyJhbGciOi", "hf_abcdefghijklmnop", "rpa_ABCDEF", "zzz"):
        assert secret not in out
    assert "postgresql://app:***@db:5432/x" in out and "x=1" in out


def test_redacts_secret_keys_in_nested_values():
    value = {"runpod_api_key": "k", "nested": {"password": "p", "ok": "fine"}, "list": ["hf_0123456789abc"]}
    assert redact(value) == {"runpod_api_key": "***", "nested": {"password": "***", "ok": "fine"},
                             "list": ["***"]}


def test_json_log_lines_carry_bound_fields_and_no_secret():
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    get_logger("t", run_id=7, attempt=2).info("connect", url="postgresql://u:hunter2@h/db")
    record = json.loads(stream.getvalue())
    assert record["run_id"] == 7 and record["attempt"] == 2 and record["event"] == "connect"
    assert "hunter2" not in stream.getvalue()
