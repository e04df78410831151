"""model.py: tiny architectures, pooling, loading from save_pretrained, ModelUnavailable."""
from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from services.common.errors import ModelUnavailable
from services.trainer.model import (
    EmbeddingModel,
    backbone_config,
    build_backbone,
    build_embedding_model,
    load_backbone,
)


@pytest.mark.parametrize("name", ["tiny-dinov2", "tiny-dinov3"])
@pytest.mark.parametrize("pooling", ["cls", "gem", "cls_mean"])
def test_tiny_models_embed_to_unit_vectors(name, pooling):
    torch.manual_seed(0)
    model = EmbeddingModel(load_backbone(name), embedding_dim=12, pooling=pooling)
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 12) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert len(model.blocks) == 3
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_tiny_dinov3_uses_the_dinov3_class_with_register_tokens():
    backbone = load_backbone("tiny-dinov3")
    assert type(backbone).__name__ == "DINOv3ViTModel"
    assert backbone.config.num_register_tokens == 2


def test_real_size_architecture_without_download():
    config = backbone_config("dinov3-large")
    assert (config.hidden_size, config.num_hidden_layers, config.patch_size) == (1024, 24, 16)
    small = build_backbone("dinov2-small")
    assert sum(p.numel() for p in small.parameters()) == pytest.approx(22.06e6, rel=0.01)


def test_load_from_save_pretrained_directory(tmp_path):
    torch.manual_seed(1)
    original = build_backbone("tiny-dinov3")
    original.save_pretrained(tmp_path)
    loaded = load_backbone("tiny-dinov3", model_path=tmp_path)
    assert type(loaded) is type(original)
    a, b = original.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_embedding_model_from_run_config(tmp_path, make_config):
    build_backbone("tiny-dinov2").save_pretrained(tmp_path)
    config = make_config().model_copy(update={"model_path": str(tmp_path)})
    model = build_embedding_model(config)
    assert model.embedding_dim == 16 and model.pooling == "cls"
    rebuilt = EmbeddingModel.from_description(model.describe())
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_missing_directory_is_model_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="save_pretrained"):
        load_backbone("dinov2-base", model_path=tmp_path / "nope")


def test_empty_directory_is_model_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="model_path must hold"):
        load_backbone("dinov2-base", model_path=tmp_path)


def test_directory_of_another_family_is_refused(tmp_path):
    build_backbone("tiny-dinov2").save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailable) as err:
        load_backbone("tiny-dinov3", model_path=tmp_path)
    assert err.value.code == "model_unavailable"


def test_gated_model_without_token_says_what_to_do():
    with pytest.raises(ModelUnavailable, match="HF_TOKEN"):
        load_backbone("dinov3-base")


def test_hub_unreachable_is_model_unavailable(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailable, match="facebook/dinov2-small"):
        load_backbone("dinov2-small")


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling"):
        EmbeddingModel(build_backbone("tiny-dinov2"), embedding_dim=8, pooling="max")
