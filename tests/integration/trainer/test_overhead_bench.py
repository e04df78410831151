"""bench/trainer_overhead.py runs at its CI smoke size against the test database."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def test_trainer_overhead_bench_smoke_run(db_url):
    env = {**os.environ, "DATABASE_URL": db_url}
    done = subprocess.run([sys.executable, "bench/trainer_overhead.py", "--tiny"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "engine/bare" in done.stdout
