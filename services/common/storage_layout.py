"""Where runs keep their objects: one bucket, `runs/{run_uuid}/attempt-{n}/epoch-{eee}/` per
checkpoint with its resume state under `resume/`. Storage keys carry the run uuid, never the
serial run id. Plain string functions (no torch), shared by the trainer and the reconciler."""
from __future__ import annotations

import re

BUCKET = "checkpoints"
RESUME = "resume/"
_RESUME_FOLDER = re.compile(r"^(runs/[^/]+/attempt-(\d+)/epoch-(\d+)/resume/)")


def run_prefix(run_uuid: str) -> str:
    """Everything a run stores, all attempts."""
    return f"runs/{run_uuid}/"


def attempt_prefix(run_uuid: str, attempt: int) -> str:
    """Where one attempt of a run writes everything it stores."""
    return f"{run_prefix(run_uuid)}attempt-{attempt}/"


def epoch_prefix(prefix: str, epoch: int) -> str:
    """One epoch's checkpoint (and its resume state) under an attempt's prefix."""
    return f"{prefix}epoch-{epoch:03d}/"


def resume_folder(key: str) -> tuple[str, int, int] | None:
    """(folder, epoch, attempt) of a key inside a resume state's folder, else None."""
    match = _RESUME_FOLDER.match(key)
    return (match[1], int(match[3]), int(match[2])) if match else None
