"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`, from the sdist: see
`transformers_suite.py`) on tiny LlamaGen models. A mixin test that does not apply is skipped with its reason."""

import unittest

import pytest
import torch

from st_ar_hf import LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig

from .transformers_suite import load_suite

suite = load_suite()
if isinstance(suite, str):
    pytest.skip(suite, allow_module_level=True)
ModelTesterMixin, ConfigTester, ids_tensor, floats_tensor = suite


class LlamaGenModelTester:
    def __init__(self, parent, batch_size=2, seq_length=16, vocab_size=64, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_classes=10):
        self.parent, self.batch_size, self.vocab_size, self.hidden_size = parent, batch_size, vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads, self.num_classes = num_hidden_layers, num_attention_heads, num_classes
        self.seq_length = seq_length  # the class token + 15 image tokens of a 4x4 grid
        self.is_training = True

    def get_config(self) -> LlamaGenConfig:
        return LlamaGenConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=48,
                              num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                              num_classes=self.num_classes, block_size=16)

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length - 1], self.vocab_size)
        class_labels = ids_tensor([self.batch_size], self.num_classes)
        return self.get_config(), {"input_ids": input_ids, "class_labels": class_labels}


class LlamaGenForImageGenerationTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (LlamaGenForImageGeneration,)

    def setUp(self):
        self.model_tester = LlamaGenModelTester(self)
        self.config_tester = ConfigTester(self, config_class=LlamaGenConfig, hidden_size=32)

    def test_config(self):
        self.config_tester.run_common_tests()


class LlamaGenVQVAEModelTester:
    def __init__(self, parent, batch_size=2, image_size=16):
        self.parent, self.batch_size, self.image_size = parent, batch_size, image_size
        self.is_training = True

    def get_config(self) -> LlamaGenVQVAEConfig:
        return LlamaGenVQVAEConfig(base_channels=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=32, codebook_size=64,
                                   codebook_embed_dim=4)

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size]) * 2 - 1
        return self.get_config(), {"pixel_values": pixel_values}


class LlamaGenVQVAETest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (LlamaGenVQVAE,)
    has_attentions = False

    def setUp(self):
        self.model_tester = LlamaGenVQVAEModelTester(self)
        self.config_tester = ConfigTester(self, config_class=LlamaGenVQVAEConfig, has_text_modality=False,
                                          common_properties=["codebook_size", "codebook_embed_dim"])

    def test_config(self):
        self.config_tester.run_common_tests()
