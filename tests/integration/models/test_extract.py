"""Extraction into local on-disk Qdrant and search, with a really trained tiny model."""
from __future__ import annotations

import asyncio

import pytest
import torch

from db import repository
from services import cli
from services.models import registry
from services.models.evaluate import embed_images, stored_records
from services.models.extract import (
    collection_name,
    extract,
    load_registered_model,
    point_id,
    qdrant_client,
)
from services.models.search import nearest_products
from services.trainer.data.download import DownloadConfig, download_images

pytestmark = pytest.mark.slow


@pytest.fixture
async def model_id(trained, mconn):
    existing = await mconn.fetchval("SELECT id FROM trained_models WHERE name = 'extract-me'")
    if existing:
        return existing
    best = await mconn.fetchval("SELECT best_checkpoint_id FROM training_runs WHERE id = $1",
                                trained.run_id)
    return (await registry.register(mconn, best, "extract-me"))["id"]


async def test_extraction_round_trip_through_local_qdrant(trained, mconn, model_id, tmp_path):
    client = qdrant_client(None, tmp_path)
    try:
        report = await extract(mconn, model_id, storage=trained.storage, client=client,
                               cache_dir=trained.data_dir / "cache")
        run_uuid = await mconn.fetchval("SELECT run_uuid::text FROM training_runs WHERE id = $1",
                                        trained.run_id)
        assert report.collection == collection_name(run_uuid, model_id)
        assert str(model_id) in report.collection and run_uuid in report.collection
        assert report.products == 12 and report.skipped == 0
        assert client.count(report.collection).count == report.images

        again = await extract(mconn, model_id, storage=trained.storage, client=client,
                              cache_dir=trained.data_dir / "cache")
        assert again.images == report.images
        assert client.count(report.collection).count == report.images  # updated in place

        # an image's embedding from extraction equals its embedding in evaluation
        registered = await load_registered_model(mconn, model_id, trained.storage)
        test_records = stored_records(await repository.run_images(mconn, trained.run_id), "test")
        images = download_images(test_records, DownloadConfig(trained.data_dir / "cache"),
                                 storage=trained.storage).images
        evaluated = embed_images(registered.model, images, registered.config,
                                 device=torch.device("cpu"))
        ids = [point_id(model_id, i.record.product_id, i.record.url) for i in images]
        stored = {p.id: p for p in client.retrieve(report.collection, ids=ids, with_vectors=True,
                                                  with_payload=True)}
        assert len(stored) == len(images)
        for image, vector, pid in zip(images, evaluated, ids):
            point = stored[pid]
            assert torch.allclose(torch.tensor(point.vector), vector, atol=1e-5)
            assert point.payload["product_id"] == image.record.product_id
            assert point.payload["domain"] == image.record.domain
            assert point.payload["category"] == image.record.category
            assert point.payload["model_id"] == model_id
            assert ("image_id" in point.payload
                    and (point.payload["image_id"] is None) == (image.record.domain == "synthetic"))

        # search: a training image finds its own product first
        train_row = next(r for r in await repository.run_images(mconn, trained.run_id)
                         if r["split"] == "train" and r["domain"] == "real")
        (train_image,) = download_images(stored_records([train_row], "train"),
                                         DownloadConfig(trained.data_dir / "cache"),
                                         storage=trained.storage).images
        hits = nearest_products(client, registered, train_image.path, k=3)
        assert hits[0]["product_id"] == train_row["product_id"]
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert len({h["product_id"] for h in hits}) == len(hits) == 3
    finally:
        client.close()


async def test_extract_and_search_from_the_cli(trained, mconn, model_id, cli_env, capsys):
    product = trained.products[2]
    assert await asyncio.to_thread(
        cli.main, ["extract", "--model", str(model_id), "--domains", "real", "cutout"]) == 0
    out = capsys.readouterr().out
    assert "12 products" in out
    assert (trained.data_dir / "qdrant").is_dir()
    row = await mconn.fetchrow(
        "SELECT i.url FROM product_images i JOIN products p ON p.id = i.product_id "
        "WHERE p.barcode = $1 AND i.domain = 'real' ORDER BY i.id LIMIT 1", product["barcode"])
    (image,) = download_images(
        stored_records([{"split": "x", "product_id": 0, "url": row["url"], "domain": "real",
                         "frame_index": None, "category": None, "brand": None,
                         "label": "q", "source_key": None}], "x"),
        DownloadConfig(trained.data_dir / "cache"), storage=trained.storage).images
    assert await asyncio.to_thread(
        cli.main, ["search", "--model", str(model_id), str(image.path), "--k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and product["product_name"] in lines[0]

    assert await asyncio.to_thread(
        cli.main, ["search", "--model", "999999", str(image.path)]) == 1
    assert "not registered" in capsys.readouterr().err
