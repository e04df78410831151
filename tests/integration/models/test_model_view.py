"""The model list (what a model dropdown shows) names the backbone and embedding size a model was
trained with, also when its run's config left them to their defaults."""
from __future__ import annotations

from db import repository


async def _registered(conn, name: str, config: dict, started: dict) -> None:
    """A run trained 'by script' through the lease holders' SQL: started with `started`, one
    checkpoint with a test evaluation, registered as `name`."""
    run_id = await repository.insert_run(conn, name, config)
    [run] = [c for c in await repository.claim_runs(conn, "t", 10, 60) if c.id == run_id]
    assert await repository.start_run(conn, run_id, run.lease_epoch, 60,
                                      {"total_epochs": 1, **started})
    await repository.append_trainer_events(conn, run_id, run.lease_epoch, 1, [
        ("checkpoint.saved", {"epoch": 1, "manifest_url": "storage://checkpoints/x/manifest.json",
                              "size_bytes": 1, "shard_count": 1, "metrics": {}}),
        ("eval.completed", {"epoch": 1, "split": "test", "overall": {"recall_at_1": 0.5}}),
    ])
    [checkpoint] = await repository.run_checkpoints(conn, run_id)
    await conn.fetchval("SELECT register_model($1, $2)", checkpoint["id"], name)


async def test_backbone_and_size_come_from_what_the_attempt_trained(conn):
    await _registered(conn, "defaults", {}, {"model": "dinov2-base", "embedding_dim": 512})
    await _registered(conn, "stated", {"model": "dinov3-small",
                                       "training": {"embedding_dim": 256}},
                      {"model": "dinov3-small", "embedding_dim": 256})
    await _registered(conn, "older-trainer", {"model": "dinov2-small",  # run.started without
                                              "training": {"embedding_dim": 128}}, {})  # them
    listed = {m["name"]: (m["backbone"], m["embedding_dim"])
              for m in await repository.registered_models(conn)}
    assert listed == {"defaults": ("dinov2-base", 512), "stated": ("dinov3-small", 256),
                      "older-trainer": ("dinov2-small", 128)}
