"""`python -m services.trainer --run-id N --attempt A`, the claim's lease token on the first line
of stdin: the job of the local launcher and of the RunPod worker. The token is the attempt's only
key to its run, so it never goes on a command line (`ps` shows those to every local user)."""
from __future__ import annotations

import argparse
import os
import sys

import torch

from db.connection import resolve_database_url
from services.common.logging import configure_logging
from services.common.settings import get_settings
from services.common.storage import storage_from_settings
from services.trainer.runner import TrainerEnvironment, run_attempt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trainer")
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--attempt", type=int, required=True)
    args = parser.parse_args(argv)
    lease_token = sys.stdin.readline().strip()
    sys.stdin.close()
    if not lease_token:
        parser.error("the claim's lease token is read from the first line of stdin; none came")
    settings = get_settings()
    configure_logging(settings.log_level, "json")
    env = TrainerEnvironment(
        database_url=resolve_database_url(settings),
        storage=storage_from_settings(settings),
        cache_dir=settings.cache_dir,
        hf_token=settings.hf_token.get_secret_value() if settings.hf_token else None,
        progress_interval=settings.progress_interval,
    )
    if env.device == "cpu":
        # Leave a core to the data loading, the event writer and the rest of the machine: on a
        # busy 2-core box two intra-op threads were 5x slower per step than one.
        torch.set_num_threads(settings.torch_threads or max(1, (os.cpu_count() or 1) - 1))
    status = run_attempt(env, args.run_id, args.attempt, lease_token)
    return 0 if status in ("completed", "cancelled", "failed") else 3


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The run is already ended in the database; don't let a download abandoned by a cancel
    # (its pool threads) keep the process alive until every queued image is fetched.
    os._exit(code)
