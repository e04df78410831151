"""Every script under bench/ runs in its tiny mode, so none can rot unnoticed (a smoke run, not
a timing). Scripts with a dedicated test that already runs them in tiny mode are checked to be
named there instead of being run twice."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
# script -> the test that runs it with --tiny and checks its figures
DEDICATED = {
    "data.py": "tests/integration/data/test_data_bench.py",
    "eval.py": "tests/integration/models/test_bench_eval.py",
    "redaction.py": "tests/unit/common/test_redaction_bench.py",
    "trainer_overhead.py": "tests/integration/trainer/test_overhead_bench.py",
}
# what each smoke-run script must print
EXPECTED = {
    "queue.py": ["Ratios and targets", "pgq drain at equal settings", "exactly-once"],
    "reconciler.py": ["big / small: sweep time", "statements"],
}


def test_every_bench_script_is_covered():
    assert set(BENCHES) == set(DEDICATED) | set(EXPECTED), (
        "a new bench script needs a tiny mode and an entry here")
    for script, test in DEDICATED.items():
        text = (ROOT / test).read_text()
        assert script in text and "--tiny" in text, (script, test)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_bench_script_runs_in_tiny_mode(script, tmp_path):
    env_args = ["--out", str(tmp_path / "out.json")] if script == "queue.py" else []
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--tiny", *env_args],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for needle in EXPECTED[script]:
        assert needle in out.stdout, (needle, out.stdout[-2000:])
