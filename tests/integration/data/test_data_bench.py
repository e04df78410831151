"""bench/data.py runs end to end in its tiny mode and prints every figure."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_data_bench_tiny_mode():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "data.py"), "--tiny"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    figures = dict(line.split(None, 1) for line in out.splitlines())
    assert int(figures["train_size"]) == 64 and int(figures["images"]) == 40
    for name in ("train_no_cache", "train_cold_cache", "train_cached", "eval_no_cache",
                 "eval_cached", "tiny_model_train_step"):
        assert float(figures[f"{name}_per_core_images_per_s"]) > 0, name
    assert float(figures["train_cached_vs_no_cache"]) > 0
