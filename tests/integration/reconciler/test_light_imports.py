"""`skutrain reconciler` starts without torch or transformers: it only needs the storage layout
(services/common/storage_layout.py), never the trainer's checkpoint code."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

HEAVY = ("torch", "transformers", "services.trainer.checkpoints")


def test_reconciler_imports_no_torch():
    code = ("import json, sys\n"
            "import services.cli, services.common.storage, services.dispatcher.launchers\n"
            "import services.reconciler.service\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) == []
