"""checkpoints.py: size-limited FP16 shards, bit-identical round trip, corruption, resume state."""
from __future__ import annotations

import time

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from services.common.errors import ChecksumMismatch, ResumeMismatch, StorageError
from services.common.storage import LocalStorage, ObjectRef
from services.trainer.checkpoints import (
    BUCKET,
    BackgroundSaver,
    delete_checkpoint,
    delete_resume_state,
    load_checkpoint,
    load_embedding_model,
    load_resume_state,
    plan_shards,
    resume_fingerprint,
    save_checkpoint,
    save_resume_state,
)
from services.trainer.config import RunConfig
from services.trainer.model import EmbeddingModel, build_embedding_model

LIMIT = 1_000_000
PREFIX = "runs/r1/attempt-1/"
PRINT = {"config": "c", "images": "i", "label_map": "l"}


@pytest.fixture(scope="module")
def big_model() -> EmbeddingModel:
    """About 7 MB in FP16, with a 2 MB projection matrix larger than the object limit."""
    torch.manual_seed(0)
    backbone = Dinov2Model(Dinov2Config(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                        patch_size=8, image_size=64))
    return EmbeddingModel(backbone, embedding_dim=4096)


def _save(storage, model, epoch=1):
    return save_checkpoint(
        storage, model.state_dict(), prefix=PREFIX, run_id="r1", epoch=epoch,
        model_name="custom",
        model_config=model.describe(), preprocessing={"image_size": 64}, label_map={0: "sku-1"},
        metrics={"val": {"recall@1": 0.5}}, max_object_bytes=LIMIT,
    )


def test_plan_shards_packs_greedily_in_order():
    sizes = {"a": 400, "b": 400, "c": 300, "d": 700}
    assert plan_shards(sizes, 1000) == [["a", "b"], ["c"], ["d"]]
    with pytest.raises(ValueError):
        plan_shards({"x": 950}, 1000)


def test_every_object_is_within_the_limit(tmp_path, big_model):
    storage = LocalStorage(tmp_path)
    manifest, ref = _save(storage, big_model)
    assert ref == ObjectRef(BUCKET, PREFIX + "epoch-001/manifest.json")
    fp16_bytes = sum(t.numel() * 2 for t in big_model.state_dict().values())
    assert fp16_bytes > 5 * LIMIT
    objects = list(storage.list(BUCKET, PREFIX + "epoch-001/"))
    assert len(objects) == len(manifest.shards) + 1
    assert all(storage.size(o) <= LIMIT for o in objects)
    assert manifest.split_tensors == {"head.proj.weight": {"shape": [4096, 256], "parts": 3}}
    assert manifest.dtype == "float16" and manifest.label_map == {"0": "sku-1"}
    assert all(len(s.sha256) == 64 and s.size == storage.size(ObjectRef(BUCKET, s.key))
               for s in manifest.shards)


def test_round_trip_is_bit_identical_fp16(tmp_path, big_model):
    storage = LocalStorage(tmp_path)
    _, ref = _save(storage, big_model)
    loaded, manifest = load_checkpoint(storage, ref)
    original = big_model.state_dict()
    assert loaded.keys() == original.keys()
    for name, tensor in original.items():
        expect = tensor.half()
        assert loaded[name].dtype == torch.float16 and loaded[name].shape == expect.shape
        assert torch.equal(loaded[name].view(torch.int16), expect.view(torch.int16)), name
    assert manifest.metrics == {"val": {"recall@1": 0.5}}


def test_model_rebuilds_from_a_checkpoint(tmp_path, big_model):
    storage = LocalStorage(tmp_path)
    _, ref = _save(storage, big_model)
    model, manifest = load_embedding_model(storage, ref)
    reference = EmbeddingModel.from_description(manifest.model_config)
    reference.load_state_dict({k: v.half().float() for k, v in big_model.state_dict().items()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))


def test_corrupted_shard_is_named(tmp_path, big_model):
    storage = LocalStorage(tmp_path)
    manifest, ref = _save(storage, big_model)
    victim = ObjectRef(BUCKET, manifest.shards[1].key)
    data = bytearray(storage.get(victim))
    data[-1] ^= 0xFF
    storage.put(victim, bytes(data))
    with pytest.raises(ChecksumMismatch, match=manifest.shards[1].key) as err:
        load_checkpoint(storage, ref)
    assert err.value.code == "checksum_mismatch"


class _LossyStorage(LocalStorage):
    def put(self, ref, data):
        super().put(ref, data[:-1])


def test_upload_that_does_not_read_back_fails_before_the_manifest(tmp_path, big_model):
    storage = _LossyStorage(tmp_path)
    with pytest.raises(StorageError, match="did not verify"):
        _save(storage, big_model)
    assert not storage.exists(ObjectRef(BUCKET, PREFIX + "epoch-001/manifest.json"))


def test_resume_state_is_split_per_epoch_verified_and_never_deletes(tmp_path, big_model):
    storage = LocalStorage(tmp_path)
    state = {"epoch": 1, "model": big_model.state_dict(), "history": [{"val": {"loss": None}}],
             "rng": {"python": (3, tuple(range(5)), None)}}
    first = save_resume_state(storage, state, prefix=PREFIX, epoch=1, fingerprint=PRINT,
                              max_object_bytes=LIMIT)
    parts = list(storage.list(BUCKET, PREFIX + "epoch-001/resume/"))
    assert len(parts) > 5 and all(storage.size(o) <= LIMIT for o in parts)
    state["epoch"] = 2
    second = save_resume_state(storage, state, prefix=PREFIX, epoch=2, fingerprint=PRINT,
                               max_object_bytes=LIMIT)
    assert second.key == PREFIX + "epoch-002/resume/manifest.json"
    assert list(storage.list(BUCKET, PREFIX + "epoch-001/resume/")) == parts  # untouched
    assert load_resume_state(storage, first, fingerprint=PRINT)["epoch"] == 1
    loaded = load_resume_state(storage, second, fingerprint=PRINT)
    assert loaded["epoch"] == 2 and loaded["history"] == state["history"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    part = ObjectRef(BUCKET, PREFIX + "epoch-002/resume/part-002")
    storage.put(part, b"junk")
    with pytest.raises(ChecksumMismatch, match="part-002"):
        load_resume_state(storage, second, fingerprint=PRINT)
    delete_resume_state(storage, first)
    assert list(storage.list(BUCKET, PREFIX + "epoch-001/")) == []


def test_resume_state_of_another_config_or_data_is_refused_naming_what_changed(tmp_path):
    storage = LocalStorage(tmp_path)
    images = [{"split": "train", "url": "u1", "label": "a"}, {"split": "val", "url": "u2",
                                                             "label": "b"}]
    saved = resume_fingerprint({"training": {"seed": 1}}, images, {"a": 0})
    assert saved == resume_fingerprint({"training": {"seed": 1}}, images[::-1], {"a": 0})
    ref = save_resume_state(storage, {"epoch": 1}, prefix=PREFIX, epoch=1, fingerprint=saved,
                            max_object_bytes=LIMIT)
    other = resume_fingerprint({"training": {"seed": 2}}, images[:1], {"a": 0})
    with pytest.raises(ResumeMismatch) as info:
        load_resume_state(storage, ref, fingerprint=other)
    assert info.value.code == "resume_mismatch"
    assert "training config" in info.value.message and "image manifest" in info.value.message
    assert "label map" not in info.value.message


def test_dinov2_small_needs_sharding_under_the_default_limit(tmp_path):
    """ViT-S in FP16 is about 44 MB: over the 42 MB default, so it must be sharded."""
    config = RunConfig(model="dinov2-small")
    model = build_embedding_model(config, pretrained=False)
    storage = LocalStorage(tmp_path)
    manifest, ref = save_checkpoint(
        storage, model.state_dict(), prefix="runs/s/attempt-1/", run_id="s", epoch=1,
        model_name=config.model,
        model_config=model.describe(), preprocessing={}, label_map={}, metrics={},
        max_object_bytes=config.checkpoint.max_object_bytes,
    )
    assert manifest.total_bytes > config.checkpoint.max_object_bytes
    assert len(manifest.shards) == 2
    assert all(storage.size(o) <= 42_000_000 for o in storage.list(BUCKET, "runs/s/"))


def test_background_saver_runs_one_save_at_a_time_and_reports_errors():
    done = []
    saver = BackgroundSaver()
    saver.submit(done.append, 1)
    saver.submit(done.append, 2)  # waits for the first
    saver.wait()
    assert done == [1, 2]

    def fail():
        raise StorageError("disk full")

    saver.submit(fail)
    with pytest.raises(StorageError, match="disk full"):
        saver.wait()
    saver.wait()  # the error is reported once

    saver.submit(fail)
    deadline = time.monotonic() + 10
    with pytest.raises(StorageError, match="disk full"):
        while time.monotonic() < deadline:
            saver.check()  # never blocks; raises once the failed save has finished


def test_delete_checkpoint_removes_every_object_of_that_epoch_only(tmp_path, big_model):
    storage = LocalStorage(tmp_path)
    _, first = _save(storage, big_model, epoch=1)
    _, second = _save(storage, big_model, epoch=2)
    delete_checkpoint(storage, first)
    assert list(storage.list(BUCKET, PREFIX + "epoch-001/")) == []
    assert load_checkpoint(storage, second)[1].epoch == 2
