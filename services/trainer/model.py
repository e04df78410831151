"""Backbones by config name, and the embedding model trained on top of them.

Every model name maps to one transformers class (`Dinov2Model` or `DINOv3ViTModel`) and an
architecture: the real DINOv2/DINOv3 sizes, or `tiny-*` versions of the same classes that train
in minutes on a laptop CPU at 56-64 px. Real weights come from a local `save_pretrained`
directory (`model_path`) or the hub; anything that keeps them from loading is a
`ModelUnavailable` with a message that says what to do. `build_backbone` makes the architecture
at its real size with random weights from the config alone (no download) for sharding tests and
GPU benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel, PreTrainedModel

from services.common.errors import ModelUnavailable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Where a model name's weights come from and what its architecture is."""

    family: str  # "dinov2" | "dinov3"
    hub_id: str | None  # None: tiny, random init only
    arch: dict[str, Any] = field(default_factory=dict)
    gated: bool = False


_DINOV3_COMMON = {
    "patch_size": 16,
    "image_size": 224,
    "num_register_tokens": 4,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-5,
    "rope_theta": 100.0,
    "key_bias": False,
    "use_gated_mlp": False,
}

BACKBONES: dict[str, BackboneSpec] = {
    "dinov2-small": BackboneSpec(
        "dinov2", "facebook/dinov2-small",
        {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "image_size": 518},
    ),
    "dinov2-base": BackboneSpec(
        "dinov2", "facebook/dinov2-base",
        {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 518},
    ),
    "dinov2-large": BackboneSpec(
        "dinov2", "facebook/dinov2-large",
        {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
         "image_size": 518},
    ),
    "dinov3-small": BackboneSpec(
        "dinov3", "facebook/dinov3-vits16-pretrain-lvd1689m",
        {**_DINOV3_COMMON, "hidden_size": 384, "intermediate_size": 1536,
         "num_hidden_layers": 12, "num_attention_heads": 6},
        gated=True,
    ),
    "dinov3-base": BackboneSpec(
        "dinov3", "facebook/dinov3-vitb16-pretrain-lvd1689m",
        {**_DINOV3_COMMON, "hidden_size": 768, "intermediate_size": 3072,
         "num_hidden_layers": 12, "num_attention_heads": 12},
        gated=True,
    ),
    "dinov3-large": BackboneSpec(
        "dinov3", "facebook/dinov3-vitl16-pretrain-lvd1689m",
        {**_DINOV3_COMMON, "hidden_size": 1024, "intermediate_size": 4096,
         "num_hidden_layers": 24, "num_attention_heads": 16},
        gated=True,
    ),
    # Same classes at toy sizes: CPU tests and the demo (56-64 px images, patch 8).
    "tiny-dinov2": BackboneSpec(
        "dinov2", None,
        {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "mlp_ratio": 2,
         "patch_size": 8, "image_size": 64},
    ),
    "tiny-dinov3": BackboneSpec(
        "dinov3", None,
        {**_DINOV3_COMMON, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
         "num_attention_heads": 4, "patch_size": 8, "image_size": 64, "num_register_tokens": 2},
    ),
}

_CLASSES: dict[str, tuple[type, type]] = {
    "dinov2": (Dinov2Config, Dinov2Model),
    "dinov3": (DINOv3ViTConfig, DINOv3ViTModel),
}


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(BACKBONES)}") from None


def backbone_config(name: str):
    """The transformers config of a model name's architecture (no download)."""
    spec = _spec(name)
    config_cls, _ = _CLASSES[spec.family]
    return config_cls(**spec.arch)


def build_backbone(name: str) -> PreTrainedModel:
    """The architecture of `name` at its real size, randomly initialised (torch's global RNG)."""
    spec = _spec(name)
    _, model_cls = _CLASSES[spec.family]
    return model_cls(backbone_config(name))


def backbone_from_config(config_dict: dict[str, Any]) -> PreTrainedModel:
    """Rebuild a backbone from `config.to_dict()` (e.g. a checkpoint manifest), random weights."""
    for config_cls, model_cls in _CLASSES.values():
        if config_dict.get("model_type") == config_cls.model_type:
            return model_cls(config_cls.from_dict(config_dict))
    raise ValueError(f"unsupported backbone model_type {config_dict.get('model_type')!r}")


def load_backbone(
    name: str, *, model_path: str | Path | None = None, hf_token: str | None = None
) -> PreTrainedModel:
    """Pretrained weights of `name`: from `model_path` when given, else from the hub.

    `tiny-*` names without a `model_path` have no pretrained weights and are built with random
    initialisation. A directory must hold the same family's weights with no missing tensor
    (the pretraining-only mask token aside), so a wrong directory never trains silently from
    random weights.
    """
    spec = _spec(name)
    if model_path is None and spec.hub_id is None:
        return build_backbone(name)
    source = str(model_path) if model_path is not None else spec.hub_id
    if model_path is not None and not Path(model_path).is_dir():
        raise ModelUnavailable(
            f"model_path {source} is not a directory: point model_path at a folder written by "
            f"save_pretrained, or leave it unset to download {spec.hub_id or name}"
        )
    if model_path is None and spec.gated and not hf_token:
        raise ModelUnavailable(
            f"{name} ({spec.hub_id}) is gated on the Hugging Face hub: accept its licence and set "
            "HF_TOKEN for the trainer, or set model_path to a local copy"
        )
    config_cls, model_cls = _CLASSES[spec.family]
    try:
        raw_config, _ = config_cls.get_config_dict(source, token=hf_token)
        if "model_type" not in raw_config:
            raise OSError(f"no config.json with a model_type in {source}")
        if raw_config["model_type"] != config_cls.model_type:
            raise ModelUnavailable(
                f"{source} holds a {raw_config.get('model_type')!r} model, not {spec.family} "
                f"weights for {name}: point model_path at a save_pretrained directory of the "
                "same family, or pick the matching model name",
                details={"source": source},
            )
        model, info = model_cls.from_pretrained(source, token=hf_token, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        advice = (
            "model_path must hold save_pretrained output (config.json and model.safetensors)"
            if model_path is not None
            else "check network access to the hub and HF_TOKEN, or set model_path to a local copy"
        )
        raise ModelUnavailable(
            f"cannot load {name} weights from {source}: {str(exc).strip().rstrip('.')}; {advice}",
            details={"source": source},
        ) from exc
    # mask_token only serves masked-image pretraining, so a checkpoint may leave it out.
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith("mask_token"))
    if missing:
        raise ModelUnavailable(
            f"{source} lacks weights of {name}: {missing[:5]}; use a directory saved from the "
            "same architecture",
            details={"source": source},
        )
    return model


def _blocks(backbone: PreTrainedModel) -> nn.ModuleList:
    return backbone.encoder.layer if isinstance(backbone, Dinov2Model) else backbone.model.layer


def _final_norm(backbone: PreTrainedModel) -> nn.Module:
    return backbone.layernorm if isinstance(backbone, Dinov2Model) else backbone.norm


# --- pooling: a registry by name, so a run config can choose ---------------------------------

class ClsPooling(nn.Module):
    def __init__(self, hidden: int, prefix: int):
        super().__init__()
        self.out_features = hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


class GeMPooling(nn.Module):
    """Generalised mean over patch tokens (register tokens and CLS excluded), learnable p."""

    def __init__(self, hidden: int, prefix: int, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.prefix, self.eps, self.out_features = prefix, eps, hidden
        self.p = nn.Parameter(torch.tensor(p))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.prefix:].float().clamp(min=self.eps)
        return patches.pow(self.p).mean(dim=1).pow(1.0 / self.p)


class ClsMeanPooling(nn.Module):
    """CLS token concatenated with the mean patch token (the DINOv2 linear-probe feature)."""

    def __init__(self, hidden: int, prefix: int):
        super().__init__()
        self.prefix, self.out_features = prefix, 2 * hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens[:, 0], tokens[:, self.prefix:].mean(dim=1)], dim=-1)


POOLINGS: dict[str, Callable[[int, int], nn.Module]] = {
    "cls": ClsPooling,
    "gem": GeMPooling,
    "cls_mean": ClsMeanPooling,
}


class EmbeddingModel(nn.Module):
    """Backbone -> pooling -> linear projection -> L2-normalised float32 embedding.

    `blocks`, `embeddings` and `final_norm` expose the backbone's parts for layer-wise lr decay;
    `head` holds the new layers (pooling and projection).
    """

    def __init__(self, backbone: PreTrainedModel, *, embedding_dim: int, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; known: {', '.join(POOLINGS)}")
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        prefix = 1 + getattr(backbone.config, "num_register_tokens", 0)
        pool = POOLINGS[pooling](hidden, prefix)
        self.head = nn.ModuleDict(
            {"pool": pool, "proj": nn.Linear(pool.out_features, embedding_dim)}
        )
        self.pooling = pooling
        self.embedding_dim = embedding_dim

    @property
    def blocks(self) -> nn.ModuleList:
        return _blocks(self.backbone)

    @property
    def embeddings(self) -> nn.Module:
        return self.backbone.embeddings

    @property
    def final_norm(self) -> nn.Module:
        return _final_norm(self.backbone)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone(pixel_values=pixel_values).last_hidden_state
        projected = self.head["proj"](self.head["pool"](tokens))
        return F.normalize(projected.float(), dim=-1)

    def describe(self) -> dict[str, Any]:
        """What rebuilds this architecture: backbone config plus head settings (for manifests)."""
        return {
            "backbone": self.backbone.config.to_dict(),
            "embedding_dim": self.embedding_dim,
            "pooling": self.pooling,
        }

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> "EmbeddingModel":
        """Random-weight model with the architecture of `describe()` output."""
        return cls(
            backbone_from_config(description["backbone"]),
            embedding_dim=description["embedding_dim"],
            pooling=description["pooling"],
        )


def build_embedding_model(
    config, *, hf_token: str | None = None, pretrained: bool = True
) -> EmbeddingModel:
    """The model a RunConfig trains: pretrained backbone (or tiny random one) plus a new head.
    `pretrained=False` builds the real-size architecture with random weights (benchmarks)."""
    backbone = (
        load_backbone(config.model, model_path=config.model_path, hf_token=hf_token)
        if pretrained
        else build_backbone(config.model)
    )
    return EmbeddingModel(
        backbone, embedding_dim=config.training.embedding_dim, pooling=config.training.pooling
    )


def preprocessing(config) -> dict[str, Any]:
    """How images must be prepared for this model (stored in every checkpoint manifest)."""
    return {"image_size": config.training.image_size, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD)}
