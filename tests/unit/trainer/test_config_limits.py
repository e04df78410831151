"""Every number in a config is held to the range its column or library accepts, and a document
no decoder can read is InvalidConfig, never a RecursionError or ValueError."""
from __future__ import annotations

import json

import pytest

from services.common.errors import InvalidConfig
from services.trainer.config import decode_config, parse_config


@pytest.mark.parametrize("raw, field", [
    ({"training": {"seed": -1}}, "training.seed"),
    ({"training": {"seed": 10**30}}, "training.seed"),
    ({"split": {"seed": 2**32}}, "split.seed"),
    ({"data_source": {"type": "dataset", "dataset_id": 10**20}}, "data_source.dataset_id"),
    ({"data_source": {"type": "selected", "product_ids": [1, 10**20]}}, "data_source.product_ids.1"),
    ({"data_source": {"type": "selected", "product_ids": [0]}}, "data_source.product_ids.0"),
    ({"model_path": "m" * 300}, "OS limit is 255"),
    ({"model_path": "/a" * 3000}, "model_path"),
    ({"model_path": "bad\x00path"}, "NUL"),
    ({"training": {"learning_rate": "NaN"}}, "training.learning_rate"),
    ({"training": {"warmup_epochs": float("inf")}}, "training.warmup_epochs"),
    ({"loss": {"arcface_weight": 1e308}}, "loss.arcface_weight"),
    ({"sampler": {"p": 10**9}}, "sampler.p"),
    ({"evaluation": {"k_values": list(range(1, 100))}}, "evaluation.k_values"),
    ({"training": {"epochs": "ten"}}, "training.epochs"),
    ({"training": []}, "training"),
])
def test_out_of_range_values_are_invalid_config(raw, field):
    with pytest.raises(InvalidConfig) as info:
        parse_config(raw)
    assert field in info.value.message


def test_triplet_miner_batch_is_bounded_with_numbers():
    raw = {"sampler": {"p": 2, "k": 1000}, "training": {"batch_size": 2000}}
    with pytest.raises(InvalidConfig) as info:
        parse_config(raw)
    message = info.value.message
    assert "batch_size 2000 needs 126.54 GiB" in message and "GiB for mining alone" in message
    assert "batch_size <= 1024" in message
    hard = {**raw, "loss": {"miner": "batch_hard"}}
    assert parse_config(hard).training.batch_size == 2000  # B^2: bounded, the memory plan decides


@pytest.mark.parametrize("text, message", [
    ('{"a":' * 5000 + "1" + "}" * 5000, "nested too deeply"),
    ('{"training": {"epochs": ' + "9" * 5001 + "}}", "invalid config"),
    ("{not json", "invalid config"),
])
def test_undecodable_text_is_invalid_config(text, message):
    with pytest.raises(InvalidConfig) as info:
        parse_config(text)
    assert message in info.value.message and len(info.value.message) < 1000


def test_huge_keys_give_a_short_message():
    with pytest.raises(InvalidConfig) as info:
        parse_config({"k" * 1_000_000: 1, **{f"x{i}": i for i in range(100)}})
    assert len(info.value.message) < 10_000 and "more" in info.value.message


def test_decoded_text_equals_parsed_dict():
    assert parse_config(json.dumps({"training": {"epochs": 3}})) == parse_config(
        {"training": {"epochs": 3}})
    assert decode_config(b"{}") == {}


def test_a_pk_batch_left_out_is_p_times_k_and_a_stated_one_must_match():
    assert parse_config({"sampler": {"p": 4, "k": 4}}).training.batch_size == 16
    assert parse_config({}).training.batch_size == 32  # the default sampler: 8 x 4
    assert parse_config({"sampler": {"type": "random"}}).training.batch_size == 32
    with pytest.raises(InvalidConfig, match=r"must equal sampler.p \* sampler.k \(4\*4=16\)"):
        parse_config({"sampler": {"p": 4, "k": 4}, "training": {"batch_size": 32}})
    # a derived batch is held to the miner's bound like a stated one
    with pytest.raises(InvalidConfig, match="batch_size 2000 needs"):
        parse_config({"sampler": {"p": 2, "k": 1000}})
