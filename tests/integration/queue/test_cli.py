import io
import json
import os
import subprocess
import sys

from db import repository
from services.cli import tail_events


async def test_events_tail_json_filters_by_run(conn, db_url):
    a = await repository.insert_run(conn, "a", {})
    b = await repository.insert_run(conn, "b", {})
    await repository.request_cancel(conn, b)
    out = io.StringIO()
    await tail_events(db_url, b, follow=False, as_json=True, out=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["run_id"], r["seq"], r["type"]) for r in rows] == [
        (b, 1, "run.queued"), (b, 2, "run.cancel_requested"), (b, 3, "run.cancelled")]
    out = io.StringIO()
    await tail_events(db_url, None, follow=False, as_json=False, out=out)
    assert out.getvalue().count("run.queued") == 2 and f"run={a}" in out.getvalue()


def test_config_commands_print_schema_and_example():
    env = {**os.environ}
    schema = json.loads(subprocess.run([sys.executable, "-m", "services.cli", "config", "schema"],
                                       check=True, capture_output=True, env=env).stdout)
    example = json.loads(subprocess.run([sys.executable, "-m", "services.cli", "config", "example"],
                                        check=True, capture_output=True, env=env).stdout)
    assert set(schema["properties"]) == set(example)
    assert example["split"] == {"train_ratio": 0.7, "val_ratio": 0.15, "test_ratio": 0.15, "seed": 42}


def test_runs_create_and_list_through_cli(db_url):
    env = {**os.environ, "DATABASE_URL": db_url}
    run = lambda *args: subprocess.run([sys.executable, "-m", "services.cli", *args], check=True,
                                       capture_output=True, text=True, env=env).stdout
    run_id = int(run("runs", "create", "cli-run", "--config", '{"training": {"epochs": 3}}'))
    assert run("runs", "cancel", str(run_id)).strip() == "cancelled"
    assert "cancelled" in run("runs", "list") and "cli-run" in run("runs", "list")
