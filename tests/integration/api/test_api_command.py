import asyncio
import os
import re
import signal
import sys

import httpx


async def test_skutrain_api_prints_its_url_and_token_serves_and_stops_on_ctrl_c(db_url):
    env = {**os.environ, "DATABASE_URL": db_url}
    env.pop("SKUTRAIN_API_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "api", "--port", "0", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        lines = []
        while not any("Ctrl-C" in line for line in lines):
            lines.append((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
        text = "".join(lines)
        base = re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/", text)[1]
        token = re.search(r"/login#token=(\S+)", text)[1]
        async with httpx.AsyncClient(base_url=base) as client:
            assert "Training runs" in (await client.get("/")).text
            body = {"name": "from-cli", "config": {}}
            assert (await client.post("/api/v1/training/runs", json=body)).status_code == 401
            created = await client.post("/api/v1/training/runs", json=body,
                                        headers={"Authorization": f"Bearer {token}"})
            assert created.status_code == 201
            # an open event stream does not hold the shutdown
            async with client.stream("GET", "/api/v1/training/events") as stream:
                assert stream.status_code == 200
                proc.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(proc.wait(), 15) in (0, 130)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rest = (await proc.stdout.read()).decode()
    assert token not in rest  # printed once, to the person who started it, never logged


def test_serving_off_loopback_without_a_token_is_refused(db_url):
    import subprocess

    env = {**os.environ, "DATABASE_URL": db_url}
    env.pop("SKUTRAIN_API_TOKEN", None)
    result = subprocess.run([sys.executable, "-m", "services.cli", "api", "--host", "0.0.0.0",
                             "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SKUTRAIN_API_TOKEN" in result.stderr + result.stdout
