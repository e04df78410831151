"""engine.py: a tiny end-to-end run through hooks, stopping, exact resume, AMP, evaluation."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from services.common.errors import InvalidConfig, NonFiniteLoss, ResumeMismatch
from services.common.storage import LocalStorage, ObjectRef
from services.trainer.checkpoints import (
    BUCKET,
    BackgroundSaver,
    load_checkpoint,
    load_resume_state,
    save_epoch,
)
from services.trainer.engine import Trainer, resolve_amp, seed_everything
from services.trainer.losses import build_loss
from services.trainer.model import build_embedding_model, preprocessing
from services.trainer.schedule import lr_at

PREFIX = "runs/run-1/attempt-1/"


class RecordingHooks:
    """Records every call; checkpoints go to a LocalStorage like the production hooks."""

    def __init__(self, storage, config, *, stop_after_batches=None, stop_at_epoch_start=None,
                 saver=None):
        self.storage, self.config, self.saver = storage, config, saver
        self.calls: list[tuple] = []
        self.batches = 0
        self.stop_after_batches = stop_after_batches
        self.stop_at_epoch_start = stop_at_epoch_start
        self.stop_checks = 0

    def on_epoch_start(self, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_batch(self, progress):
        self.batches += 1
        self.calls.append(("batch", progress))

    def should_stop(self):
        self.stop_checks += 1
        if self.stop_after_batches is not None and self.batches >= self.stop_after_batches:
            return "cancel requested"
        if ("epoch_start", self.stop_at_epoch_start) in self.calls:
            return "lease lost"
        return None

    def save_checkpoint(self, epoch, model, summary, resume_state):
        save = self.saver.submit if self.saver else lambda fn, *a, **kw: fn(*a, **kw)
        save(
            save_epoch, self.storage, model, resume_state, prefix=PREFIX, run_id="run-1",
            epoch=epoch, fingerprint={},
            model_name=self.config.model, preprocessing=preprocessing(self.config),
            label_map={0: "product-0"}, metrics={"val": summary["val"]},
            max_object_bytes=self.config.checkpoint.max_object_bytes,
        )
        self.calls.append(("checkpoint", epoch))

    def on_epoch_end(self, summary):
        self.calls.append(("epoch_end", summary))

    def kinds(self):
        return [c[0] if c[0] == "batch" else c for c in self.calls if c[0] != "epoch_end"]


def make_trainer(config, train, val, hooks, *, seed=0, resume_state=None):
    seed_everything(seed)
    model = build_embedding_model(config)
    loss = build_loss(config.loss, num_classes=max(train.labels) + 1,
                      embedding_dim=config.training.embedding_dim)
    return Trainer(model, loss, train, val, config, device="cpu", hooks=hooks,
                   resume_state=resume_state)


def checkpoint_epochs(storage):
    return sorted({o.key.split("/")[3] for o in storage.list(BUCKET, PREFIX + "epoch-")})


def resume_state(storage, epoch):
    ref = ObjectRef(BUCKET, f"{PREFIX}epoch-{epoch:03d}/resume/manifest.json")
    return load_resume_state(storage, ref, fingerprint={})


def manifest_ref(epoch):
    return ObjectRef(BUCKET, f"{PREFIX}epoch-{epoch:03d}/manifest.json")


def test_two_epochs_end_to_end(tmp_path, make_items, make_config):
    config = make_config()
    storage = LocalStorage(tmp_path)
    hooks = RecordingHooks(storage, config)
    trainer = make_trainer(config, make_items(6, 4), make_items(4, 3, seed=1), hooks)
    result = trainer.run()

    assert result.status == "completed" and result.stop_reason is None
    assert hooks.kinds() == [("epoch_start", 1), "batch", "batch", "batch", ("checkpoint", 1),
                             ("epoch_start", 2), "batch", "batch", "batch", ("checkpoint", 2)]
    progress = [c[1] for c in hooks.calls if c[0] == "batch"]
    assert [(p["epoch"], p["batch"], p["num_batches"]) for p in progress] == [
        (1, 1, 3), (1, 2, 3), (1, 3, 3), (2, 1, 3), (2, 2, 3), (2, 3, 3)]
    # 3 batches per epoch, 6 in all, warmup round(0.5 * 3) = 2 steps
    for step, p in enumerate(progress):
        assert p["lr"] == pytest.approx(lr_at(step, 6, 2, 1e-3, 1e-5))
        assert set(p["losses"]) == {"arcface", "triplet", "domain", "total"}
        assert all(math.isfinite(v) for v in p["losses"].values())
    assert progress[1]["lr"] == pytest.approx(1e-3)

    summaries = [c[1] for c in hooks.calls if c[0] == "epoch_end"]
    assert [s["epoch"] for s in summaries] == [1, 2]
    last = summaries[-1]
    assert last["lr"]["backbone_norm"] == pytest.approx(1e-5)
    assert last["lr"]["head"] == pytest.approx(1e-4)  # head multiplier 10 at min ratio
    assert last["lr"]["block_00"] == pytest.approx(1e-5 * 0.8 ** 3)
    assert {"embeddings", "arcface"} <= set(last["lr"])
    assert {"recall@1", "recall@5", "map", "map@r", "loss", "num_queries"} <= set(last["val"])
    assert last["val"]["num_queries"] == 12 and last["images_per_second"] > 0
    assert last["train_loss"]["total"] == pytest.approx(
        sum(p["losses"]["total"] for p in progress[3:]) / 3)

    assert checkpoint_epochs(storage) == ["epoch-001", "epoch-002"]
    state, manifest = load_checkpoint(storage, manifest_ref(2))
    assert manifest.epoch == 2 and manifest.preprocessing["image_size"] == 32
    assert all(t.dtype == torch.float16 for t in state.values())
    assert resume_state(storage, 2)["epoch"] == 2
    assert [s["best_epoch"] for s in summaries][-1] == result.best_epoch
    assert result.best_epoch in (1, 2) and result.best["epoch"] == result.best_epoch


def test_stop_mid_epoch_within_one_batch_without_a_checkpoint(tmp_path, make_items, make_config):
    config = make_config()
    storage = LocalStorage(tmp_path)
    hooks = RecordingHooks(storage, config, stop_after_batches=4)  # epoch 2, after its 1st batch
    result = make_trainer(config, make_items(6, 4), make_items(4, 3, seed=1), hooks).run()
    assert result.status == "stopped" and result.stop_reason == "cancel requested"
    assert hooks.batches == 4
    assert [s["epoch"] for s in result.epochs] == [1]
    assert checkpoint_epochs(storage) == ["epoch-001"]
    assert resume_state(storage, 1)["epoch"] == 1
    assert ("checkpoint", 2) not in hooks.calls


def test_stop_in_the_first_epoch_saves_nothing(tmp_path, make_items, make_config):
    config = make_config()
    storage = LocalStorage(tmp_path)
    hooks = RecordingHooks(storage, config, stop_after_batches=1)
    result = make_trainer(config, make_items(6, 4), make_items(4, 3, seed=1), hooks).run()
    assert result.status == "stopped" and result.best_epoch is None
    assert hooks.batches == 1 and checkpoint_epochs(storage) == []


class AugmentedItems:
    """Items whose every read draws from Python's, NumPy's and torch's RNGs, as augmentations do
    (in the training process, or in DataLoader workers with num_workers > 0)."""

    def __init__(self, items):
        self.items, self.labels, self.domains = items, items.labels, items.domains

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        image, label, domain = self.items[index]
        shift = random.random() + float(np.random.rand()) + torch.rand(()).item()
        return image + 0.1 * shift, label, domain


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, make_items, make_config,
                                                               num_workers):
    config = make_config(pooling="gem", epochs=3, warmup_epochs=1.0, num_workers=num_workers)
    train, val = AugmentedItems(make_items(6, 4)), make_items(4, 3, seed=1)

    straight_hooks = RecordingHooks(LocalStorage(tmp_path / "a"), config)
    straight = make_trainer(config, train, val, straight_hooks)
    straight_result = straight.run()

    storage = LocalStorage(tmp_path / "b")
    first = make_trainer(config, train, val, RecordingHooks(storage, config, stop_at_epoch_start=2))
    assert first.run().status == "stopped"

    state = resume_state(storage, 1)
    hooks = RecordingHooks(storage, config)
    resumed = make_trainer(config, train, val, hooks, seed=123, resume_state=state)
    resumed_result = resumed.run()

    assert hooks.kinds()[0] == ("epoch_start", 2)
    assert resumed.step == straight.step == 9
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert torch.equal(straight.loss.arcface.W, resumed.loss.arcface.W)
    for a, b in zip(straight_result.epochs, resumed_result.epochs):
        assert a["train_loss"] == b["train_loss"] and a["val"] == b["val"]
    assert resumed_result.best_epoch == straight_result.best_epoch
    with pytest.raises(ResumeMismatch, match="format 99"):
        make_trainer(config, train, val, hooks, resume_state={**state, "format": 99})


def test_non_finite_loss_fails_naming_epoch_and_batch(tmp_path, make_items, make_config):
    config = make_config()
    train = make_items(6, 4)
    train.images[8:16] = float("nan")  # the second batch of epoch 1 holds poisoned images
    hooks = RecordingHooks(LocalStorage(tmp_path), config)
    trainer = make_trainer(config, train, make_items(4, 3, seed=1), hooks)
    with pytest.raises(NonFiniteLoss, match="epoch 1, batch") as info:
        trainer.run()
    assert info.value.code == "non_finite_loss" and info.value.details["epoch"] == 1
    assert hooks.batches == info.value.details["batch"] - 1  # no progress for the bad batch


def test_early_stopping_on_val_recall(tmp_path, make_items, make_config):
    config = make_config(epochs=4, early_stopping={"patience": 1, "min_delta": 1.0})
    hooks = RecordingHooks(LocalStorage(tmp_path), config)
    result = make_trainer(config, make_items(6, 4), make_items(4, 3, seed=1), hooks).run()
    assert result.status == "early_stopped"
    assert [s["early_stop"] for s in result.epochs] == [False, True]


def test_bf16_autocast_trains_on_cpu(tmp_path, make_items, make_config):
    config = make_config(amp="bf16", epochs=1)
    trainer = make_trainer(config, make_items(6, 4), make_items(4, 3, seed=1),
                           RecordingHooks(LocalStorage(tmp_path), config))
    before = trainer.loss.arcface.W.detach().clone()
    result = trainer.run()
    assert math.isfinite(result.epochs[0]["train_loss"]["total"])
    assert trainer.loss.arcface.W.dtype == torch.float32
    assert not torch.equal(before, trainer.loss.arcface.W.detach())


def test_amp_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_amp("auto", cpu).enabled is False
    auto_cuda = resolve_amp("auto", cuda)
    assert (auto_cuda.dtype, auto_cuda.use_scaler) == (torch.float16, True)
    bf16 = resolve_amp("bf16", cpu)
    assert bf16.dtype == torch.bfloat16 and not bf16.use_scaler
    with pytest.raises(InvalidConfig, match="CUDA"):
        resolve_amp("fp16", cpu)


def test_background_saving_writes_each_epochs_own_weights(tmp_path, make_items, make_config):
    config = make_config()
    train, val = make_items(6, 4), make_items(4, 3, seed=1)
    inline = LocalStorage(tmp_path / "inline")
    make_trainer(config, train, val, RecordingHooks(inline, config)).run()
    background = LocalStorage(tmp_path / "background")
    saver = BackgroundSaver()
    trainer = make_trainer(config, train, val, RecordingHooks(background, config, saver=saver))
    trainer.run()
    saver.wait()
    for epoch in (1, 2):
        a, _ = load_checkpoint(inline, manifest_ref(epoch))
        b, _ = load_checkpoint(background, manifest_ref(epoch))
        assert all(torch.equal(a[k], b[k]) for k in a)
    last, _ = load_checkpoint(background, manifest_ref(2))
    live = trainer.model.state_dict()
    assert all(torch.equal(last[k], live[k].half()) for k in live)
