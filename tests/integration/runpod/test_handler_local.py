"""`python -m services.trainer.handler --test_input '{...}'`: the RunPod SDK's local mode runs
our handler once, against the real database, exactly as a job would."""
import json
import os
import subprocess
import sys

import pytest

from db import repository
from services.common.errors import InvalidConfig
from services.common.settings import Settings
from services.trainer.handler import job_input, job_settings, parse_job_input, trainer_environment

pytestmark = pytest.mark.slow


def run_handler(job: dict, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.trainer.handler", "--test_input", json.dumps(job)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=180)


async def test_test_input_runs_the_trainer_against_the_database(conn, db_url, tmp_path):
    """A claimed run whose config the trainer refuses: the trainer ends it (fenced on the
    job's lease_epoch) and the handler reports the attempt ended."""
    run_id = await repository.insert_run(conn, "local", {"training": {"epochs": "many"}})
    (claimed,) = await repository.claim_runs(conn, "test", 1, 60)
    job = job_input(run_id, claimed.attempt, claimed.lease_epoch, {"progress_interval": 0})
    done = run_handler({"input": job}, {"DATABASE_URL": db_url,
                                        "SKUTRAIN_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"'output': {{'run_id': {run_id}, 'attempt': 1, 'outcome': 'ended'}}" in done.stdout
    row = await repository.get_run(conn, run_id)
    assert (row["status"], row["error_code"]) == ("failed", "invalid_config")


def test_input_beyond_ids_and_settings_is_refused_without_echoing_it():
    secret = "postgresql://u:hunter2@db/x"
    done = run_handler({"input": {"run_id": 1, "attempt": 1, "lease_epoch": 1,
                                  "database_url": secret}}, {})
    assert done.returncode == 1
    # (the SDK's local mode echoes the whole test job at DEBUG; our error names the field only)
    messages = [line for line in (done.stdout + done.stderr).splitlines()
                if '"error_message"' in line]
    assert messages and all("database_url: Extra inputs are not permitted" in m for m in messages)
    assert not any("hunter2" in m for m in messages)
    with pytest.raises(InvalidConfig, match="settings.hf_token"):
        parse_job_input({"run_id": 1, "attempt": 1, "lease_epoch": 1,
                         "settings": {"hf_token": "x"}})


def test_job_settings_travel_as_the_workers_environment():
    settings = Settings(SKUTRAIN_PROGRESS_INTERVAL="0.5", HF_TOKEN="hf_secret",
                        DATABASE_URL="postgresql://x")
    carried = job_settings(settings)
    assert carried == {"progress_interval": 0.5, "log_level": settings.log_level}
    env = trainer_environment(parse_job_input(job_input(1, 1, 1, carried)))
    assert env["SKUTRAIN_PROGRESS_INTERVAL"] == "0.5"
