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
        self.config_tester = ConfigTester(self, config_class=LlamaGenConfig, hidden_size=32, num_attention_heads=4)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """The mixin's, plus the `labels` [B, seq_length] that it builds for the causal LMs it knows (zeros): the image
        tokens whose next-token loss the training tests backpropagate."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels:
            inputs_dict["labels"] = torch.zeros(self.model_tester.batch_size, self.model_tester.seq_length, dtype=torch.long)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()


class LlamaGenVQVAEModelTester:
    # [C, H, W] of the feature maps: the encoder's (into level 0, out of levels 0 and 1 and the mid block), then the
    # decoder's (out of the mid block and levels 0 and 1)
    hidden_state_shapes = [[32, 16, 16], [32, 8, 8], [64, 8, 8], [64, 8, 8], [64, 8, 8], [64, 16, 16], [32, 16, 16]]

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

    def test_hidden_states_output(self):
        """The mixin's test, asked by argument and then by config, with the [C, H, W] of the conv feature maps in
        place of its [seq_len, hidden] (as transformers' own tests of conv models do)."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for by_config in (False, True):
            config.output_hidden_states = by_config
            model = LlamaGenVQVAE(config).eval()
            with torch.no_grad():
                outputs = model(**inputs_dict, **({} if by_config else {"output_hidden_states": True}))
            self.assertEqual([list(h.shape[1:]) for h in outputs.hidden_states], self.model_tester.hidden_state_shapes)

    @unittest.skip(reason="pixels in: the VQ autoencoder has no token embeddings (its codebook is looked up by "
                          "decode's code ids, not by an input sequence of forward)")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason="pixels in: the VQ autoencoder has no token embeddings to resize")
    def test_resize_tokens_embeddings(self):
        pass

    @unittest.skip(reason="forward returns the quantizer's loss terms, not one `loss`: the tokenizer's training loss "
                          "adds reconstruction, perceptual and adversarial terms outside the model "
                          "(training/train_tokenizer.py)")
    def test_training(self):
        pass
