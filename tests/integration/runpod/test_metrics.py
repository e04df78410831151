"""Prometheus metrics of the dispatcher and the reconciler, scraped over HTTP from the
exposition server (ephemeral port)."""
import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from db import repository
from services.common import metrics
from services.common.storage import LocalStorage
from services.dispatcher.launchers import NoopLauncher
from services.dispatcher.service import Dispatcher, DispatcherConfig
from services.reconciler.service import Reconciler, ReconcilerConfig
from tests.support.polling import until


@pytest.fixture(scope="module")
def metrics_port():
    return metrics.serve(0)


def scrape(port) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_dispatcher_and_reconciler_metrics_are_scraped(metrics_port, db_url, catalog_conn,
                                                             tmp_path):
    conn = catalog_conn
    before = scrape(metrics_port)
    good = await repository.insert_run(conn, "good", {})
    bad = await repository.insert_run(conn, "bad", {"training": {"epochs": "many"}})
    dispatcher = Dispatcher(db_url, NoopLauncher(), DispatcherConfig(poll_interval=0.2))
    await dispatcher.start()
    task = asyncio.create_task(dispatcher.wait())
    try:
        await until(lambda: conn.fetchval(
            "SELECT count(*) = 2 FROM training_runs WHERE status IN ('claimed', 'failed')"))
    finally:
        dispatcher.stop()
        await task
    assert (await repository.get_run(conn, bad))["status"] == "failed"

    # a running trainer's last epoch, and an expired lease for the reconciler
    run = await repository.get_run(conn, good)
    await conn.execute("UPDATE training_runs SET status = 'running' WHERE id = $1", good)
    await conn.execute(
        "INSERT INTO training_events (run_id, attempt, seq, type, payload) "
        "VALUES ($1, $2, 100, 'epoch.completed', $3)",
        good, run["attempt"], {"epoch": 1, "images_per_second": 123.5})
    await metrics.refresh_from_database(conn)
    after = scrape(metrics_port)
    assert after[("skutrain_runs", (("status", "running"),))] == 1
    assert after[("skutrain_runs", (("status", "failed"),))] == 1
    assert after[("skutrain_trainer_images_per_second", (("run", str(run["run_uuid"])),))] == 123.5
    launches = ("skutrain_launches_total", (("launcher", "noop"),))
    assert after[launches] - before.get(launches, 0) == 1
    failures = ("skutrain_launch_failures_total", (("error_code", "invalid_config"),
                                                   ("launcher", "noop")))
    assert after[failures] - before.get(failures, 0) == 1
    claims = ("skutrain_claim_seconds_count", ())
    assert after[claims] - before.get(claims, 0) >= 1

    await conn.execute("UPDATE training_runs SET lease_expires_at = now() - interval '1 s' "
                       "WHERE id = $1", good)
    reconciler = Reconciler(db_url, [NoopLauncher()], LocalStorage(tmp_path / "storage"),
                            ReconcilerConfig(poll_interval=60, orphan_interval=3600))
    await reconciler.start()
    try:
        await until(lambda: conn.fetchval(
            "SELECT status = 'queued' FROM training_runs WHERE id = $1", good))
    finally:
        reconciler.stop()
        await reconciler.wait()
    final = scrape(metrics_port)
    expired = ("skutrain_lease_expirations_total", ())
    assert final[expired] - before.get(expired, 0) == 1
    recovered = ("skutrain_reconcile_actions_total", (("action", "recovered"),))
    assert final[recovered] - before.get(recovered, 0) == 1
