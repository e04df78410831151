"""Training-loop overhead: the product's training path against a bare PyTorch loop.

Same tiny model (same init), data, batch plan and loss through (a) a plain loop
(DataLoader -> forward -> loss -> backward -> clip -> AdamW) and (b) the product's own path:
`engine.Trainer` with the runner's `RunHooks` on a real `Attempt` (a claimed run in Postgres,
its EventWriter thread streaming throttled progress and epoch events, heartbeats with the step)
and its `checkpoints.BackgroundSaver` writing and verifying an FP16 sharded checkpoint plus the
resume state to a LocalStorage temp dir after every epoch, under the attempt's prefix.

The two loops run interleaved batch by batch: before each engine batch the hooks run one batch
of the bare loop (its own model copy, optimizer and DataLoader) and time it apart. On a shared
VM the machine's speed drifts by tens of percent within seconds, so timing the loops one after
the other mostly measures that drift; alternating every ~50 ms cancels it. Engine time = its
`run()` wall (or CPU) time, plus the wait for the last checkpoint, less the bare batches run
inside it and less its per-epoch validation (work the bare loop does not do; the hooks time the
gap between an epoch's last batch and its checkpoint). Hooks, events, checkpoint writing and all
of the engine's bookkeeping count. Target: engine / bare >= 0.97.

One torch thread by default: with one thread per core (torch's default) every small op of a
tiny model waits at a thread barrier for the other core, and when any other process holds that
core the run slows down twenty-fold. `--threads 2` is for a machine with nothing else running.
The database is DATABASE_URL's (or the embedded one; give it one without a dispatcher), migrated
to head first; each measured run is marked for deletion afterwards (request_delete). `--tiny` is
the CI smoke size (one short run, no timing claims).

    python bench/trainer_overhead.py [--repeats 3] [--epochs 2] [--threads N] [--tiny]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

# A script's own folder comes first on sys.path, and bench/ holds a queue.py that would shadow
# the standard library's `queue` (which torch imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from db import repository  # noqa: E402
from db.connection import resolve_database_url  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from services.common.settings import get_settings  # noqa: E402
from services.common.storage import LocalStorage  # noqa: E402
from services.trainer.checkpoints import BackgroundSaver  # noqa: E402
from services.trainer.config import RunConfig  # noqa: E402
from services.trainer.engine import Trainer, seed_everything  # noqa: E402
from services.trainer.event_writer import EventWriterConfig  # noqa: E402
from services.trainer.losses import build_loss  # noqa: E402
from services.trainer.model import build_embedding_model  # noqa: E402
from services.trainer.runner import Attempt, RunHooks, TrainerEnvironment  # noqa: E402
from services.trainer.sampler import batch_plan  # noqa: E402

DOMAINS = ("synthetic", "real")


class SyntheticItems:
    """In-memory images, one noisy prototype per label (engine.ItemDataset)."""

    def __init__(self, n_labels: int, per_label: int, size: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        n = n_labels * per_label
        protos = torch.randn(n_labels, 3, size, size, generator=g)
        noise = 0.5 * torch.randn(n, 3, size, size, generator=g)
        self.images = protos.repeat_interleave(per_label, 0) + noise
        self.labels = [i // per_label for i in range(n)]
        self.domains = [DOMAINS[i % 2] for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], self.domains[i]


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class InterleavingHooks(RunHooks):
    """The runner's hooks, also running (and timing apart) one bare batch per engine batch."""

    def __init__(self, *args, bare: Iterator[int]):
        super().__init__(*args)
        self.bare = bare
        self.bare_time = [0.0, 0.0]  # (wall, cpu) spent in bare batches
        self.validation = [0.0, 0.0]  # (wall, cpu) from an epoch's last batch to its checkpoint
        self._epoch_done = False
        self._after_last = (0.0, 0.0)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._epoch_done = False

    def should_stop(self) -> str | None:
        if not self._epoch_done:  # the call before each engine batch, not the one after the last
            wall, cpu = _clocks()
            next(self.bare)
            now_wall, now_cpu = _clocks()
            self.bare_time[0] += now_wall - wall
            self.bare_time[1] += now_cpu - cpu
        return super().should_stop()

    def on_batch(self, progress: dict) -> None:
        super().on_batch(progress)
        if progress["batch"] == progress["num_batches"]:
            self._epoch_done = True
            self._after_last = _clocks()

    def save_checkpoint(self, epoch: int, model, summary: dict, resume_state: dict) -> None:
        wall, cpu = _clocks()
        self.validation[0] += wall - self._after_last[0]
        self.validation[1] += cpu - self._after_last[1]
        super().save_checkpoint(epoch, model, summary, resume_state)


async def _with_conn(database_url: str, fn):
    conn = await repository.connect(database_url)
    try:
        return await fn(conn)
    finally:
        await conn.close()


async def _claimed_run(conn, config: RunConfig) -> tuple[repository.Lease, int]:
    """A run inserted, claimed and launched as the dispatcher would: (its lease, attempt)."""
    run_id = await repository.insert_run(conn, "bench-trainer-overhead",
                                         config.model_dump(mode="json"), priority=1000)
    (run,) = await repository.claim_runs(conn, "bench", 1, 600)  # the top priority: ours
    assert run.id == run_id, "another queued run came first: use a database of its own"
    await repository.mark_launched(conn, run_id, run.lease_epoch, "bench", None)
    return repository.Lease(run_id, run.lease_token), run.attempt


def make_config(epochs: int) -> RunConfig:
    return RunConfig.model_validate({
        "model": "tiny-dinov2",
        "training": {"epochs": epochs, "batch_size": 32, "image_size": 56, "embedding_dim": 64,
                     "learning_rate": 1e-3, "min_lr": 1e-5, "warmup_epochs": 0.5,
                     "num_workers": 0},
        "sampler": {"p": 8, "k": 4},
        "loss": {"miner": "batch_hard"},
        "checkpoint": {"max_object_bytes": 1_000_000},
    })


def build(config: RunConfig, train: SyntheticItems):
    seed_everything(config.training.seed)
    model = build_embedding_model(config)
    loss = build_loss(config.loss, num_classes=max(train.labels) + 1,
                      embedding_dim=config.training.embedding_dim)
    return model, loss


def bare_batches(config: RunConfig, train: SyntheticItems, model, loss) -> Iterator[int]:
    """A plain loop over the engine's batch plan, one batch per `next()` (yields its size)."""
    t = config.training
    params = list(model.parameters()) + loss.arcface_parameters()
    # fused: the kernel the engine uses, so the comparison is about the loop, not the optimizer
    opt = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=True)
    model.train()
    for epoch in range(1, t.epochs + 1):
        plan = batch_plan(config.sampler, t.batch_size, train.labels, seed=t.seed, epoch=epoch,
                          domains=train.domains)
        for images, labels, domains in DataLoader(train, batch_sampler=plan):
            parts = loss(model(images), labels, domains)
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            yield len(labels)


def interleaved_run(config: RunConfig, train: SyntheticItems, val: SyntheticItems,
                    database_url: str) -> dict:
    """images/s of the bare loop and of the product's path, by wall clock and by CPU time."""
    bare = bare_batches(config, train, *build(config, train))
    model, loss = build(config, train)
    with tempfile.TemporaryDirectory() as tmp:
        env = TrainerEnvironment(
            database_url=database_url, storage=LocalStorage(Path(tmp)), cache_dir=Path(tmp),
            device="cpu", writer=EventWriterConfig(heartbeat_interval=1.0, lease_seconds=60))
        current = Attempt(env, *asyncio.run(_with_conn(
            database_url, lambda conn: _claimed_run(conn, config))))
        current.writer.start()
        try:
            assert current.load_run() is not None and current.start({"bench": True})
            saver = BackgroundSaver()
            hooks = InterleavingHooks(current, env, config, {}, {}, saver, None, bare=bare)
            trainer = Trainer(model, loss, train, val, config, device="cpu", hooks=hooks)
            wall, cpu = _clocks()
            with saver:  # the last checkpoint's upload counts too
                result = trainer.run()
            wall, cpu = (end - start for end, start in zip(_clocks(), (wall, cpu)))
            current.finish("cancelled", payload={"reason": "benchmark done"})
        finally:
            current.writer.close()
        # Its checkpoints lived in a temp dir: the reconciler removes the run and its rows.
        asyncio.run(_with_conn(database_url,
                               lambda conn: repository.request_delete(conn, current.run_id)))
    images = sum(e["num_batches"] for e in result.epochs) * config.training.batch_size
    engine_wall = wall - hooks.bare_time[0] - hooks.validation[0]
    engine_cpu = cpu - hooks.bare_time[1] - hooks.validation[1]
    return {
        "bare_wall": images / hooks.bare_time[0], "bare_cpu": images / hooks.bare_time[1],
        "engine_wall": images / engine_wall, "engine_cpu": images / engine_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: see the module docstring)")
    parser.add_argument("--tiny", action="store_true",
                        help="CI smoke size: one run of one short epoch, no warm-up")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    database_url = resolve_database_url(get_settings())
    upgrade(database_url)
    labels, repeats, epochs = (16, 1, 1) if args.tiny else (160, args.repeats, args.epochs)
    config = make_config(epochs)
    train = SyntheticItems(labels, 8, 56, seed=0)  # 160 labels: 40 batches of 8 x 4 per epoch
    val = SyntheticItems(16, 4, 56, seed=1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(train)} train "
          f"images, {epochs} epochs per run, batch 32 (8 x 4) at 56 px, tiny-dinov2, the "
          "runner's hooks (events to Postgres, checkpoints on its BackgroundSaver)")
    if not args.tiny:
        interleaved_run(make_config(1), train, val, database_url)  # warm-up
    runs = []
    for i in range(repeats):
        r = interleaved_run(config, train, val, database_url)
        runs.append(r)
        print(f"  run {i + 1}: bare {r['bare_wall']:6.1f} img/s ({r['bare_cpu']:6.1f} per CPU-s) | "
              f"engine {r['engine_wall']:6.1f} img/s ({r['engine_cpu']:6.1f} per CPU-s) | "
              f"ratio {r['engine_wall'] / r['bare_wall']:.3f} wall, "
              f"{r['engine_cpu'] / r['bare_cpu']:.3f} CPU")
    for clock in ("wall", "cpu"):
        bare = statistics.median(r[f"bare_{clock}"] for r in runs)
        engine = statistics.median(r[f"engine_{clock}"] for r in runs)
        ratio = statistics.median(r[f"engine_{clock}"] / r[f"bare_{clock}"] for r in runs)
        print(f"{clock:>4}: bare {bare:6.1f} img/s | engine {engine:6.1f} img/s | "
              f"engine/bare {ratio:.3f} (median of {len(runs)}; target >= 0.97)")


if __name__ == "__main__":
    main()
