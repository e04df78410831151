import pytest
from starlette.requests import Request

from db.repository import EventCursor
from services.api.auth import COOKIE_NAME, TokenAuth, is_loopback
from services.api.dashboard import run_view
from services.api.server import resolve_token
from services.api.stream import event_id, parse_event_id


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.org", False)])
def test_only_loopback_addresses_count_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_event_ids_round_trip_and_reject_anything_else():
    assert parse_event_id("123:45") == EventCursor("123", 45)
    assert event_id(EventCursor("123", 45)) == "123:45"
    assert parse_event_id(None) is None and parse_event_id("") is None
    for bad in ("latest", "1:", ":2", "1:2:3", "-1:2", "1;2"):
        with pytest.raises(ValueError):
            parse_event_id(bad)


def _request(headers: dict[str, str]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/",
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


def test_token_sources_and_the_write_guard():
    auth = TokenAuth("s3cret", reads_need_token=False)
    assert auth.authenticated(_request({"Authorization": "Bearer s3cret"}), write=True)
    assert auth.authenticated(_request({"Authorization": "bearer s3cret"}), write=True)
    assert not auth.authenticated(_request({"Authorization": "Bearer s3cre"}), write=True)
    assert not auth.authenticated(_request({"Authorization": "Basic s3cret"}), write=True)
    cookie = {"Cookie": f"{COOKIE_NAME}=s3cret"}
    assert auth.authenticated(_request(cookie), write=False)
    assert not auth.authenticated(_request(cookie), write=True)  # no X-Skutrain-Request header
    assert auth.authenticated(_request({**cookie, "X-Skutrain-Request": "1"}), write=True)
    with pytest.raises(ValueError):
        TokenAuth("", reads_need_token=True)


def test_a_token_is_generated_only_for_loopback():
    assert resolve_token("mine", "0.0.0.0") == ("mine", False)
    token, generated = resolve_token(None, "127.0.0.1")
    assert generated and len(token) >= 32
    with pytest.raises(SystemExit, match="SKUTRAIN_API_TOKEN"):
        resolve_token(None, "0.0.0.0")


def _row(**kw):
    return {"status": "running", "current_epoch": 0, "total_epochs": None, "config_epochs": None, **kw}


def test_run_view_progress_and_latest_metrics():
    assert run_view(_row(current_epoch=1, total_epochs=4), None)["epoch_percent"] == 25
    assert run_view(_row(config_epochs=5), None)["total"] == 5  # before the trainer starts
    assert run_view(_row(), None)["total"] == 10  # the config default
    early = run_view(_row(status="completed", current_epoch=7, total_epochs=30), None)
    assert early["stopped_early"] and early["epoch_percent"] == 100 and early["final"]
    latest = run_view(_row(), {"loss": {"total": 1.5}, "val": {"recall_at_1": 0.4}})
    assert (latest["latest_loss"], latest["latest_r1"]) == (1.5, 0.4)
