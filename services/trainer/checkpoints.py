"""Checkpoints as FP16 safetensors shards under a per-object size limit, and the resume state.

Layout in the bucket (default "checkpoints"), one prefix per attempt (`attempt_prefix`):
  runs/<run_uuid>/attempt-<a>/epoch-<NNN>/model-<iiiii>-of-<nnnnn>.safetensors  weights, FP16
  runs/<run_uuid>/attempt-<a>/epoch-<NNN>/manifest.json                         written last
  runs/<run_uuid>/attempt-<a>/epoch-<NNN>/resume/part-<iii>     torch.save bytes, split
  runs/<run_uuid>/attempt-<a>/epoch-<NNN>/resume/manifest.json  written last
Keys carry the run's uuid (never the serial id, which restarts with a new database) and the
attempt, so an attempt writes only under its own prefix and nothing here deletes or overwrites
another attempt's objects. Objects are found through the database (checkpoint rows name the
manifests and resume states), never by listing storage.

Every object is at most `max_object_bytes`. Tensors are packed into shards greedily in state-dict
order. A tensor too large for one object is flattened and cut into contiguous parts stored as 1-D
tensors named `<name>::part-<iii>` (for a row-major tensor a part of whole rows is a contiguous
range, so this is the row split generalised); the manifest's `split_tensors` gives each such
tensor's shape and part count, and loading concatenates the parts in order and reshapes them.
Floating tensors are stored as float16 (bit-identical on load); other dtypes are kept.

Each object is read back after upload (size and sha256) before the next step, and the manifest
is written only after every shard verified, so a manifest always names complete shards; the
caller inserts a checkpoint row only after `save_checkpoint` returns. Loading verifies sha256 and
raises ChecksumMismatch naming the object.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from services.common.errors import ChecksumMismatch, ResumeMismatch, StorageError
from services.common.storage import ObjectRef, Storage
from services.common.storage_layout import BUCKET, RESUME, attempt_prefix, epoch_prefix
from services.trainer.model import EmbeddingModel

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_PART = "::part-"
_HEADER_BASE = 128  # safetensors length prefix, padding and JSON braces


@dataclass
class ShardInfo:
    key: str
    size: int
    sha256: str
    tensors: list[str]


@dataclass
class CheckpointManifest:
    """What a checkpoint holds and how to rebuild and prepare inputs for its model."""

    run_id: str
    epoch: int
    model_name: str
    model_config: dict[str, Any]
    preprocessing: dict[str, Any]
    label_map: dict[str, Any]
    metrics: dict[str, Any]
    shards: list[ShardInfo]
    split_tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    dtype: str = "float16"
    max_object_bytes: int = 0
    bucket: str = BUCKET
    format_version: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.shards)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "CheckpointManifest":
        raw = json.loads(data)
        raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
        return cls(**raw)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _header_bytes(key: str, tensor: torch.Tensor) -> int:
    """Generous size of one tensor's entry in a safetensors JSON header."""
    return len(key.encode()) + 96 + 24 * tensor.ndim


def _entry_bytes(key: str, tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size() + _header_bytes(key, tensor)


def to_storage_tensors(state_dict: dict[str, torch.Tensor], max_object_bytes: int) -> tuple[
    dict[str, torch.Tensor], dict[str, dict[str, Any]]
]:
    """FP16 copies of the state dict with oversized tensors cut into parts (see module doc)."""
    out: dict[str, torch.Tensor] = {}
    split: dict[str, dict[str, Any]] = {}
    room = max_object_bytes - _HEADER_BASE
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu()
        t = (t.to(torch.float16) if t.is_floating_point() else t).contiguous()
        if _entry_bytes(name, t) <= room:
            out[name] = t
            continue
        part_key = f"{name}{_PART}000"
        per_part = (room - _header_bytes(part_key, t.reshape(-1))) // t.element_size()
        if per_part < 1:
            raise ValueError(f"max_object_bytes {max_object_bytes} is too small for tensor {name}")
        flat = t.reshape(-1)
        n_parts = -(-flat.numel() // per_part)
        for i in range(n_parts):
            out[f"{name}{_PART}{i:03d}"] = flat[i * per_part:(i + 1) * per_part].clone()
        split[name] = {"shape": list(t.shape), "parts": n_parts}
    return out, split


def plan_shards(entry_sizes: dict[str, int], max_object_bytes: int) -> list[list[str]]:
    """Greedy packing of entries (key -> bytes incl. header share) into objects in order."""
    shards: list[list[str]] = []
    used = max_object_bytes  # forces a first shard
    for key, size in entry_sizes.items():
        if size + _HEADER_BASE > max_object_bytes:
            raise ValueError(f"entry {key} ({size} bytes) cannot fit in {max_object_bytes} bytes")
        if used + size > max_object_bytes:
            shards.append([])
            used = _HEADER_BASE
        shards[-1].append(key)
        used += size
    return shards


def _put_verified(storage: Storage, ref: ObjectRef, data: bytes) -> str:
    """Upload, then read back size and sha256; returns the sha256."""
    digest = _sha256(data)
    storage.put(ref, data)
    size = storage.size(ref)
    if size != len(data) or _sha256(storage.get(ref)) != digest:
        raise StorageError(
            f"upload of {ref.url} did not verify (wrote {len(data)} bytes, read back {size}); "
            "check the storage backend and retry"
        )
    return digest


def _get_verified(storage: Storage, ref: ObjectRef, size: int, sha256: str) -> bytes:
    data = storage.get(ref)
    if len(data) != size or _sha256(data) != sha256:
        raise ChecksumMismatch(
            f"checkpoint object {ref.url} is corrupt: expected {size} bytes with sha256 "
            f"{sha256[:12]}..., got {len(data)} bytes with sha256 {_sha256(data)[:12]}...",
            details={"object": ref.url},
        )
    return data


def save_checkpoint(
    storage: Storage,
    state_dict: dict[str, torch.Tensor],
    *,
    prefix: str,
    run_id: str,
    epoch: int,
    model_name: str,
    model_config: dict[str, Any],
    preprocessing: dict[str, Any],
    label_map: dict[str, Any],
    metrics: dict[str, Any],
    max_object_bytes: int,
    bucket: str = BUCKET,
) -> tuple[CheckpointManifest, ObjectRef]:
    """Upload FP16 shards, each verified, then the manifest; returns it and its location.

    `prefix` is the attempt's (`attempt_prefix`); `run_id` (the run's uuid) is recorded in the
    manifest."""
    tensors, split = to_storage_tensors(state_dict, max_object_bytes)
    plan = plan_shards({k: _entry_bytes(k, t) for k, t in tensors.items()}, max_object_bytes)
    prefix = epoch_prefix(prefix, epoch)
    shards: list[ShardInfo] = []
    for i, keys in enumerate(plan, start=1):
        data = st_save({k: tensors[k] for k in keys})
        if len(data) > max_object_bytes:
            raise StorageError(f"shard {i} came out at {len(data)} bytes, over {max_object_bytes}")
        ref = ObjectRef(bucket, f"{prefix}model-{i:05d}-of-{len(plan):05d}.safetensors")
        shards.append(ShardInfo(ref.key, len(data), _put_verified(storage, ref, data), keys))
    manifest = CheckpointManifest(
        run_id=run_id, epoch=epoch, model_name=model_name, model_config=model_config,
        preprocessing=preprocessing, label_map={str(k): v for k, v in label_map.items()},
        metrics=metrics, shards=shards, split_tensors=split, max_object_bytes=max_object_bytes,
        bucket=bucket,
    )
    manifest_ref = ObjectRef(bucket, prefix + MANIFEST)
    data = manifest.to_json()
    if len(data) > max_object_bytes:
        raise StorageError(f"manifest of {len(data)} bytes is over {max_object_bytes}")
    _put_verified(storage, manifest_ref, data)
    return manifest, manifest_ref


def read_manifest(storage: Storage, manifest_ref: ObjectRef) -> CheckpointManifest:
    return CheckpointManifest.from_json(storage.get(manifest_ref))


def delete_checkpoint(storage: Storage, manifest_ref: ObjectRef) -> None:
    """Remove a checkpoint's shards, then its manifest (so a half-deleted one reads as corrupt,
    never as complete)."""
    for shard in read_manifest(storage, manifest_ref).shards:
        storage.delete(ObjectRef(manifest_ref.bucket, shard.key))
    storage.delete(manifest_ref)


def delete_resume_state(storage: Storage, manifest_ref: ObjectRef) -> None:
    """Remove a resume state's parts, then its manifest (the reconciler's delete path; the
    trainer never deletes)."""
    for part in json.loads(storage.get(manifest_ref))["parts"]:
        storage.delete(ObjectRef(manifest_ref.bucket, part["key"]))
    storage.delete(manifest_ref)


def load_checkpoint(
    storage: Storage, manifest_ref: ObjectRef
) -> tuple[dict[str, torch.Tensor], CheckpointManifest]:
    """The FP16 state dict (parts reassembled) and the manifest; shards are sha256-checked."""
    manifest = read_manifest(storage, manifest_ref)
    tensors: dict[str, torch.Tensor] = {}
    for shard in manifest.shards:
        ref = ObjectRef(manifest_ref.bucket, shard.key)
        tensors.update(st_load(_get_verified(storage, ref, shard.size, shard.sha256)))
    for name, info in manifest.split_tensors.items():
        parts = [tensors.pop(f"{name}{_PART}{i:03d}") for i in range(info["parts"])]
        tensors[name] = torch.cat(parts).reshape(info["shape"])
    return tensors, manifest


def load_embedding_model(
    storage: Storage, manifest_ref: ObjectRef
) -> tuple[EmbeddingModel, CheckpointManifest]:
    """A float32 EmbeddingModel rebuilt from a checkpoint (e.g. for embedding extraction)."""
    state, manifest = load_checkpoint(storage, manifest_ref)
    model = EmbeddingModel.from_description(manifest.model_config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval(), manifest


def resume_fingerprint(config: dict[str, Any], images: list[dict[str, Any]],
                       label_map: dict[str, Any]) -> dict[str, str]:
    """sha256 of what a resumed attempt must share with the one that saved the state: the
    training-relevant config, the image manifest (split, url, product, label, domain per image,
    order-free) and the label map. One digest per part, so a mismatch can say which changed."""

    def digest(value: Any) -> str:
        return _sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())

    rows = sorted(json.dumps(i, sort_keys=True) for i in images)
    return {"config": digest(config), "images": digest(rows),
            "label_map": digest({str(k): v for k, v in label_map.items()})}


def check_fingerprint(saved: dict[str, str] | None, expected: dict[str, str],
                      source: str) -> None:
    """Raise ResumeMismatch naming every part that differs between two fingerprints."""
    what = {"config": "the training config (model, training, loss or sampler settings)",
            "images": "the image manifest (the run's images or their splits)",
            "label_map": "the label map (the classes trained on)"}
    changed = [what[k] for k in expected if (saved or {}).get(k) != expected[k]]
    if changed:
        raise ResumeMismatch(
            f"cannot resume from {source}: {'; '.join(changed)} differ from what that state "
            "was saved with. Resume only a run whose config and data are unchanged, or queue a "
            "new run.", details={"resume_state": source, "changed": changed})


def save_resume_state(
    storage: Storage,
    state: dict[str, Any],
    *,
    prefix: str,
    epoch: int,
    fingerprint: dict[str, str],
    max_object_bytes: int,
    bucket: str = BUCKET,
) -> ObjectRef:
    """Store a resume state beside epoch `epoch`'s checkpoint under the attempt's `prefix`:
    parts first, then the manifest (with the fingerprint). Deletes nothing."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    prefix = epoch_prefix(prefix, epoch) + RESUME
    parts = []
    for i, start in enumerate(range(0, max(len(data), 1), max_object_bytes)):
        chunk = data[start:start + max_object_bytes]
        ref = ObjectRef(bucket, f"{prefix}part-{i:03d}")
        digest = _put_verified(storage, ref, chunk)
        parts.append({"key": ref.key, "size": len(chunk), "sha256": digest})
    manifest_ref = ObjectRef(bucket, prefix + MANIFEST)
    body = {"format_version": FORMAT_VERSION, "epoch": epoch, "fingerprint": fingerprint,
            "parts": parts}
    _put_verified(storage, manifest_ref, json.dumps(body, indent=1).encode())
    return manifest_ref


def load_resume_state(
    storage: Storage, manifest_ref: ObjectRef, *, fingerprint: dict[str, str]
) -> dict[str, Any]:
    """The resume state a checkpoint row names. Raises ResumeMismatch when it was saved for
    another config, image manifest or label map; parts are sha256-checked and loaded with
    `weights_only=True` (the state holds only tensors and plain Python values)."""
    body = json.loads(storage.get(manifest_ref))
    check_fingerprint(body.get("fingerprint"), fingerprint, manifest_ref.url)
    data = b"".join(
        _get_verified(storage, ObjectRef(manifest_ref.bucket, p["key"]), p["size"], p["sha256"])
        for p in body["parts"]
    )
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class SavedEpoch:
    manifest: CheckpointManifest
    manifest_ref: ObjectRef
    resume_ref: ObjectRef


def save_epoch(
    storage: Storage,
    model: EmbeddingModel,
    resume_state: dict[str, Any],
    *,
    prefix: str,
    run_id: str,
    epoch: int,
    model_name: str,
    preprocessing: dict[str, Any],
    label_map: dict[str, Any],
    metrics: dict[str, Any],
    fingerprint: dict[str, str],
    max_object_bytes: int,
    bucket: str = BUCKET,
) -> SavedEpoch:
    """One epoch's weights checkpoint, then its resume state (what a hooks object saves).

    The weights come from `resume_state["model"]`, the engine's snapshot of the epoch's end, not
    from the live `model` (used only for its architecture), so this may run on a
    BackgroundSaver thread while training goes on.
    """
    manifest, manifest_ref = save_checkpoint(
        storage, resume_state["model"], prefix=prefix, run_id=run_id, epoch=epoch,
        model_name=model_name, model_config=model.describe(), preprocessing=preprocessing,
        label_map=label_map, metrics=metrics, max_object_bytes=max_object_bytes, bucket=bucket,
    )
    resume_ref = save_resume_state(
        storage, resume_state, prefix=prefix, epoch=epoch, fingerprint=fingerprint,
        max_object_bytes=max_object_bytes, bucket=bucket,
    )
    return SavedEpoch(manifest, manifest_ref, resume_ref)


class BackgroundSaver:
    """Runs saves one at a time on a worker thread, so training goes on during uploads.

    `submit` first waits for the previous save (at most one in flight, so memory stays bounded)
    and re-raises its error; `check` re-raises a finished save's error without waiting (so a
    failed upload stops training within a batch); call `wait` after training to finish the last
    save. What a save reads must not change meanwhile: the engine's resume state is a CPU
    snapshot, made for this.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.wait()

        def work() -> None:
            try:
                fn(*args, **kwargs)
            except BaseException as exc:  # handed to the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=work, name="checkpoint-saver", daemon=True)
        self._thread.start()

    def __enter__(self) -> "BackgroundSaver":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Finish the last save; its error wins only when nothing else is being raised."""
        try:
            self.wait()
        except Exception:
            if exc is None:
                raise

    def check(self) -> None:
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
