import json

import pytest

from services.common.errors import InvalidConfig
from services.trainer.config import RunConfig, config_json_schema, example_config, parse_config


def test_empty_config_has_the_checklist_defaults():
    c = parse_config({})
    assert (c.split.train_ratio, c.split.val_ratio, c.split.test_ratio, c.split.seed) == (0.70, 0.15, 0.15, 42)
    assert (c.sampler.type, c.sampler.p, c.sampler.k) == ("pk", 8, 4)
    assert (c.loss.arcface_weight, c.loss.triplet_weight, c.loss.domain_weight) == (1.0, 0.5, 0.1)
    assert c.training.early_stopping.patience == 5
    assert c.checkpoint.max_object_bytes == 42_000_000
    assert c.label_config.min_samples_per_class == 2
    assert c.image_config.frame_interval == 5 and c.image_config.max_frames_per_type == 10
    assert parse_config(None) == c


def test_example_round_trips_and_schema_lists_every_section():
    example = example_config()
    assert parse_config(json.loads(json.dumps(example))) == RunConfig()
    schema = config_json_schema()
    assert set(schema["properties"]) == set(example)
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("raw, field", [
    ({"training": {"batch_size": 0}}, "training.batch_size"),
    ({"training": {"llrd_decay": 1.01}}, "training.llrd_decay"),
    ({"split": {"train_ratio": 0.5}}, "split ratios must sum to 1"),
    ({"extra": 1}, "extra"),
    ({"data_source": {"type": "dataset"}}, "dataset_id"),
    ({"model": "vit-huge"}, "model"),
])
def test_invalid_values_name_the_field(raw, field):
    with pytest.raises(InvalidConfig) as info:
        parse_config(raw)
    assert info.value.code == "invalid_config"
    assert field in info.value.message


def test_every_problem_is_reported_at_once():
    with pytest.raises(InvalidConfig) as info:
        parse_config({"training": {"epochs": -1, "learning_rate": "fast"}, "loss": {"type": "x"}})
    assert len(info.value.details["errors"]) == 3


def test_k_values_are_sorted_and_unique():
    assert parse_config({"evaluation": {"k_values": [10, 1, 5, 5]}}).evaluation.k_values == [1, 5, 10]
