"""Test support: the API served by real uvicorn on a loopback port, and a scripted trainer that
drives a run through the same fenced SQL functions the real trainer uses (claim, start, append
events, finish), for tests that need finished runs quickly."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from db import repository
from services.api.app import create_app
from services.api.auth import TokenAuth
from services.api.server import AppServer, bind, url_of

TOKEN = "test-token-0123456789"


@asynccontextmanager
async def serving(db_url: str, *, reads_need_token: bool = False, stream_poll: float = 0.1):
    """Yields the base URL of the app served on 127.0.0.1 (a free port)."""
    app = create_app(db_url, TokenAuth(TOKEN, reads_need_token=reads_need_token),
                     stream_poll=stream_poll)
    server = AppServer(app)
    sock = bind("127.0.0.1", 0)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        await task
        sock.close()


def epoch_metrics(epoch: int, r1: float) -> dict:
    return {"recall_at_1": r1, "recall_at_5": min(r1 + 0.2, 1.0), "recall_at_10": min(r1 + 0.3, 1.0),
            "map": r1 * 0.8, "num_queries": 40}


async def scripted_training(conn, run_id: int, val_r1: list[float], *, test_r1: float) -> None:
    """Claim run_id and train it 'by script' on the first two catalog products (its test split,
    so runs scripted on one catalog share a test split): one epoch per val_r1 value, a checkpoint
    per epoch, the best marked, a test evaluation of the best, then completed."""
    products = await conn.fetch("SELECT id FROM products ORDER BY id LIMIT 2")
    names = [str(p["id"]) for p in products]
    claimed = await repository.claim_runs(conn, "scripted", 100, 60)
    run = next(c for c in claimed if c.id == run_id)
    lease = run.lease_epoch
    await repository.trainer_store_run_images(conn, repository.Lease(run_id, run.lease_token), [
        {"split": "test", "product_id": p["id"], "url": f"storage://catalog/{p['id']}.jpg",
         "domain": "real", "label": str(p["id"])} for p in products])
    assert await repository.start_run(conn, run_id, lease, 60, {"total_epochs": len(val_r1)})
    best = max(range(len(val_r1)), key=lambda i: val_r1[i]) + 1
    events: list[tuple[str, dict]] = []
    for epoch, r1 in enumerate(val_r1, start=1):
        metrics = epoch_metrics(epoch, r1)
        loss = {"total": 2.0 / epoch, "arcface": 1.5 / epoch, "triplet": 0.4 / epoch,
                "domain": 0.1 / epoch}
        events += [
            ("batch.progress", {"epoch": epoch, "batch": 4, "num_batches": 4, "loss": loss,
                                "lr": {"backbone": 1e-4, "head": 1e-3}}),
            ("epoch.completed", {"epoch": epoch, "loss": loss,
                                 "lr": {"backbone": 1e-4 / epoch, "head": 1e-3 / epoch},
                                 "val": {**metrics, "loss": 1.0 / epoch},
                                 "images_per_second": 100.0, "duration_s": 1.0}),
            ("checkpoint.saved", {"epoch": epoch, "size_bytes": 1_000_000, "shard_count": 1,
                                  "manifest_url": f"storage://checkpoints/runs/{run_id}/e{epoch}/manifest.json",
                                  "resume_state_url": None, "train_loss": loss["total"],
                                  "val_loss": 1.0 / epoch, "metrics": metrics}),
        ]
        if epoch == best:
            events.append(("checkpoint.best", {"epoch": epoch, "metrics": metrics}))
    overall = epoch_metrics(best, test_r1)
    events.append(("eval.completed", {
        "epoch": best, "split": "test", "overall": overall,
        "real_to_synthetic": epoch_metrics(best, test_r1 - 0.1),
        "synthetic_to_real": epoch_metrics(best, test_r1 - 0.05),
        "domain_pairs": {"real->synthetic": epoch_metrics(best, test_r1 - 0.1),
                         "cutout->real": epoch_metrics(best, test_r1 - 0.2)},
        "per_category": {"Category 0": {"recall_at_1": test_r1, "count": 20},
                         "Category 1": {"recall_at_1": test_r1 - 0.1, "count": 20}},
        "hard_cases": {"worst_products": [{"label": names[0], "recall@1": 0.25, "count": 4}],
                       "most_confused_pairs": [{"labels": list(names), "count": 3}]}}))
    await repository.append_trainer_events(conn, run_id, lease, 1, events)
    assert await repository.finish_run(conn, run_id, lease, "completed",
                                       payload={"best_epoch": best, "epochs_run": len(val_r1)})
