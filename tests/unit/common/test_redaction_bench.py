"""bench/redaction.py runs at its CI smoke size and shows the old pattern's blow-up."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_redaction_bench_smoke_run():
    done = subprocess.run([sys.executable, "bench/redaction.py", "--tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("before/redact_text") == 4
