import pytest
import torch

from st_ar_hf import LLAMAGEN_PRESETS, LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig

PUBLISHED_GPT_PARAMETERS = {"B": 110_888_448, "L": 342_910_976, "XL": 774_699_520, "XXL": 1_410_972_672, "3B": 3_096_659_200}
PUBLISHED_FFN_WIDTH = {"B": 2048, "L": 2816, "XL": 3584, "XXL": 4096, "3B": 8704}


@pytest.mark.parametrize("size", sorted(LLAMAGEN_PRESETS))
def test_gpt_presets_have_published_parameter_counts(size):
    config = LlamaGenConfig.from_preset(size)
    assert config.intermediate_size == PUBLISHED_FFN_WIDTH[size]
    with torch.device("meta"):
        model = LlamaGenForImageGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_GPT_PARAMETERS[size]


@pytest.mark.parametrize("name, parameters", [("VQ-16", 71_883_403), ("VQ-8", 70_109_835)])
def test_vq_presets_have_published_parameter_counts(name, parameters):
    with torch.device("meta"):
        model = LlamaGenVQVAE(LlamaGenVQVAEConfig.from_preset(name))
    assert sum(p.numel() for p in model.parameters()) == parameters


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=100, num_attention_heads=3), "hidden_size"),
        (dict(hidden_size=120, num_attention_heads=4), "divisible by 4"),  # head_dim 30
        (dict(block_size=250), "block_size 250"),
        (dict(num_attention_heads=12, num_key_value_heads=5), "num_key_value_heads"),
        (dict(class_dropout_prob=1.5), "class_dropout_prob"),
    ],
)
def test_gpt_config_rejects_invalid_architecture(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LlamaGenConfig(**kwargs)


def test_vq_config_rejects_invalid_architecture():
    with pytest.raises(ValueError, match="ch_mult"):
        LlamaGenVQVAEConfig(ch_mult=[])
    with pytest.raises(ValueError, match="base_channels"):
        LlamaGenVQVAEConfig(base_channels=48)
    with pytest.raises(ValueError, match="size must be one of"):
        LlamaGenConfig.from_preset("b")


def test_config_round_trips_through_json(tmp_path):
    config = LlamaGenConfig.from_preset("XL", block_size=576)
    config.save_pretrained(tmp_path)
    loaded = LlamaGenConfig.from_pretrained(tmp_path)
    assert (loaded.num_hidden_layers, loaded.block_size, loaded.intermediate_size, loaded.grid_size) == (36, 576, 3584, 24)
