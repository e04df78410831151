"""bench/eval.py --tiny runs end to end (CI smoke) and its numbers agree with faiss."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def test_eval_bench_tiny_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "eval.py"), "--tiny"],
                         capture_output=True, text=True, timeout=300, check=True, cwd=ROOT)
    report = json.loads(out.stdout)
    assert report["recall@1_agrees_with_faiss"]
    assert report["ours"]["num_queries"] == report["size"]["queries"]
    assert report["time_ratio_vs_faiss"] > 0 and report["memory_gb_beyond_embeddings"] >= 0
    assert report["extraction"]["extract_images_per_s"] > 0
    assert "(target <= 1.3x" in out.stderr and "(target <= 2 GB)" in out.stderr
