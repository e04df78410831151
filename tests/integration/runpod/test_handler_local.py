"""`python -m services.trainer.handler --test_input '{...}'`: the RunPod SDK's local mode runs
our handler once, against the real database, exactly as a job would."""
import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest

from db import repository
from db.queries import QUERIES
from services.common.errors import InvalidConfig
from services.common.settings import Settings
from services.trainer.handler import job_input, job_settings, parse_job_input, trainer_environment

pytestmark = pytest.mark.slow


def handler_command(job: dict) -> list[str]:
    return [sys.executable, "-m", "services.trainer.handler", "--test_input", json.dumps(job)]


def run_handler(job: dict, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(handler_command(job), env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=180)


def outcome_line(run_id: int, outcome: str) -> str:
    return f"'output': {{'run_id': {run_id}, 'attempt': 1, 'outcome': '{outcome}'}}"


async def test_test_input_runs_the_trainer_against_the_database(conn, db_url, tmp_path):
    """A claimed run whose config the trainer refuses: the trainer ends it (through the job's
    lease token) and the handler reports the attempt ended."""
    run_id = await repository.insert_run(conn, "local", {"training": {"epochs": "many"}})
    (claimed,) = await repository.claim_runs(conn, "test", 1, 60)
    assert await repository.mark_launched(conn, run_id, claimed.lease_epoch, "runpod", "job-1")
    job = job_input(run_id, claimed.attempt, claimed.lease_token, {"progress_interval": 0})
    done = run_handler({"input": job}, {"DATABASE_URL": db_url,
                                        "SKUTRAIN_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert outcome_line(run_id, "ended") in done.stdout
    row = await repository.get_run(conn, run_id)
    assert (row["status"], row["error_code"]) == ("failed", "invalid_config")


async def test_the_worker_trains_only_once_its_launch_is_recorded(conn, db_url, tmp_path):
    """The dispatcher records the launch after RunPod accepted the job: the worker waits for
    that record, so run.launched precedes the trainer's first event (run.started)."""
    run_id = await repository.insert_run(conn, "local", {})  # no catalog: fails after starting
    (claimed,) = await repository.claim_runs(conn, "test", 1, 60)
    job = job_input(run_id, claimed.attempt, claimed.lease_token, {"progress_interval": 0})
    worker = subprocess.Popen(handler_command({"input": job}), text=True,
                              env={**os.environ, "DATABASE_URL": db_url,
                                   "SKUTRAIN_DATA_DIR": str(tmp_path)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    communicate = asyncio.create_task(asyncio.to_thread(worker.communicate, timeout=180))
    # The worker is at its gate once its connection has asked for the record; nothing of the
    # trainer's is written while it waits.
    for _ in range(600):
        if await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND query = $1", QUERIES["trainer_launch_recorded"]):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the worker never asked for its launch record")
    await asyncio.sleep(0.5)  # a few more polls
    assert worker.poll() is None
    assert [e["type"] for e in await repository.run_events(conn, run_id)] == ["run.queued", "run.claimed"]
    assert await repository.mark_launched(conn, run_id, claimed.lease_epoch, "runpod", "job-1")
    stdout, stderr = await communicate
    assert worker.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert outcome_line(run_id, "ended") in stdout
    seq = {e["type"]: e["seq"] for e in await repository.run_events(conn, run_id)}
    assert seq["run.claimed"] < seq["run.launched"] < seq["run.started"] < seq["run.failed"]


async def test_a_stale_job_ends_as_lease_lost_without_training(conn, db_url, tmp_path):
    """A job whose lease moved on (the run was requeued and claimed again) never trains."""
    run_id = await repository.insert_run(conn, "local", {})
    (stale,) = await repository.claim_runs(conn, "test", 1, 60)
    assert await repository.release_run(conn, run_id, stale.lease_epoch, "test")
    (current,) = await repository.claim_runs(conn, "test", 1, 60)
    assert await repository.mark_launched(conn, run_id, current.lease_epoch, "runpod", "job-2")
    events_before = await repository.run_events(conn, run_id)
    job = job_input(run_id, stale.attempt, stale.lease_token, {})
    done = run_handler({"input": job}, {"DATABASE_URL": db_url,
                                        "SKUTRAIN_DATA_DIR": str(tmp_path),
                                        "SKUTRAIN_LAUNCH_RECORD_TIMEOUT": "60"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert outcome_line(run_id, "lease_lost") in done.stdout
    assert await repository.run_events(conn, run_id) == events_before
    assert (await repository.get_run(conn, run_id))["status"] == "claimed"


async def test_a_job_whose_launch_is_never_recorded_fails_without_training(conn, db_url,
                                                                            tmp_path):
    """Its dispatcher died between /run and the record: the job fails, the run stays claimed
    (its lease expires and the reconciler requeues it) and nothing was trained."""
    run_id = await repository.insert_run(conn, "local", {})
    (claimed,) = await repository.claim_runs(conn, "test", 1, 60)
    job = job_input(run_id, claimed.attempt, claimed.lease_token, {})
    done = run_handler({"input": job}, {"DATABASE_URL": db_url,
                                        "SKUTRAIN_DATA_DIR": str(tmp_path),
                                        "SKUTRAIN_LAUNCH_RECORD_TIMEOUT": "1"})
    assert done.returncode == 1
    assert f"the launch of run {run_id} attempt 1 was not recorded within 1s" in done.stdout
    assert [e["type"] for e in await repository.run_events(conn, run_id)] == ["run.queued", "run.claimed"]
    assert (await repository.get_run(conn, run_id))["status"] == "claimed"


def test_input_beyond_ids_and_settings_is_refused_without_echoing_it():
    secret = "postgresql://u:hunter2@db/x"
    done = run_handler({"input": {"run_id": 1, "attempt": 1, "lease_token": str(uuid.uuid4()),
                                  "database_url": secret}}, {})
    assert done.returncode == 1
    # (the SDK's local mode echoes the whole test job at DEBUG; our error names the field only)
    messages = [line for line in (done.stdout + done.stderr).splitlines()
                if '"error_message"' in line]
    assert messages and all("database_url: Extra inputs are not permitted" in m for m in messages)
    assert not any("hunter2" in m for m in messages)
    with pytest.raises(InvalidConfig, match="settings.hf_token"):
        parse_job_input({"run_id": 1, "attempt": 1, "lease_token": str(uuid.uuid4()),
                         "settings": {"hf_token": "x"}})


def test_job_settings_travel_as_the_workers_environment():
    settings = Settings(SKUTRAIN_PROGRESS_INTERVAL="0.5", HF_TOKEN="hf_secret",
                        DATABASE_URL="postgresql://x")
    carried = job_settings(settings)
    assert carried == {"progress_interval": 0.5, "log_level": settings.log_level}
    env = trainer_environment(parse_job_input(job_input(1, 1, str(uuid.uuid4()), carried)))
    assert env["SKUTRAIN_PROGRESS_INTERVAL"] == "0.5"
