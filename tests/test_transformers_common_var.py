"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`, from the sdist: see
`transformers_suite.py`) on tiny VAR, FlexVAR and VAR VQVAE models. A mixin test that does not apply is skipped with its
reason."""

import unittest

import pytest
import torch

from st_ar_hf import FlexVARConfig, FlexVARForImageGeneration, VARConfig, VARForImageGeneration, VARVQVAE, VARVQVAEConfig

from .transformers_suite import load_suite

suite = load_suite()
if isinstance(suite, str):
    pytest.skip(suite, allow_module_level=True)
ModelTesterMixin, ConfigTester, ids_tensor, floats_tensor = suite

VAR_HAS_NO_TOKEN_EMBEDDINGS = ("no token embeddings to resize: image codes enter as vectors of the tokenizer's codebook "
                               "(`scale_inputs`), and the input embeddings are the class embeddings, whose rows are "
                               "classes, not the codes that `lm_head` predicts")
VQVAE_HAS_NO_TOKEN_EMBEDDINGS = "no token embeddings to resize: the input is pixels"


class VARModelTester:
    def __init__(self, parent, config_class, batch_size=2, vocab_size=64, codebook_embed_dim=8, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, num_classes=10, patch_nums=(1, 2, 4)):
        self.parent, self.config_class, self.batch_size, self.vocab_size = parent, config_class, batch_size, vocab_size
        self.codebook_embed_dim, self.hidden_size, self.num_classes = codebook_embed_dim, hidden_size, num_classes
        self.num_hidden_layers, self.num_attention_heads, self.patch_nums = num_hidden_layers, num_attention_heads, patch_nums
        self.seq_length = sum(side * side for side in patch_nums)  # the start token + 20 positions of scales 1, 2
        self.is_training = True

    def get_config(self) -> VARConfig:
        return self.config_class(vocab_size=self.vocab_size, codebook_embed_dim=self.codebook_embed_dim,
                                 hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                                 num_attention_heads=self.num_attention_heads, intermediate_size=48,
                                 num_classes=self.num_classes, patch_nums=list(self.patch_nums))

    def prepare_config_and_inputs_for_common(self):
        class_labels = ids_tensor([self.batch_size], self.num_classes)
        scale_inputs = floats_tensor([self.batch_size, self.seq_length - 1, self.codebook_embed_dim])
        return self.get_config(), {"class_labels": class_labels, "scale_inputs": scale_inputs}


class VARForImageGenerationTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VARForImageGeneration,)
    config_class = VARConfig

    def setUp(self):
        self.model_tester = VARModelTester(self, self.config_class)
        self.config_tester = ConfigTester(self, config_class=self.config_class, hidden_size=32)

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """The mixin's labels come from transformers' Auto mappings, which do not list our models: `labels` are the code
        ids of all positions, as for a causal LM."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels:
            inputs_dict["labels"] = torch.zeros(self.model_tester.batch_size, self.model_tester.seq_length, dtype=torch.long)
        return inputs_dict

    @unittest.skip(reason=VAR_HAS_NO_TOKEN_EMBEDDINGS)
    def test_resize_tokens_embeddings(self):
        pass

    @unittest.skip(reason=VAR_HAS_NO_TOKEN_EMBEDDINGS)
    def test_resize_embeddings_untied(self):
        pass


class FlexVARForImageGenerationTest(VARForImageGenerationTest):
    all_model_classes = (FlexVARForImageGeneration,)
    config_class = FlexVARConfig


class VARVQVAEModelTester:
    def __init__(self, parent, batch_size=2, image_size=8):
        self.parent, self.batch_size, self.image_size = parent, batch_size, image_size
        self.is_training = True

    def get_config(self) -> VARVQVAEConfig:
        return VARVQVAEConfig(base_channels=32, ch_mult=[1, 2], num_res_blocks=1, codebook_size=64, codebook_embed_dim=8,
                              patch_nums=[1, 2, 4])

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size]) * 2 - 1
        return self.get_config(), {"pixel_values": pixel_values}


class VARVQVAETest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VARVQVAE,)
    has_attentions = False

    def setUp(self):
        self.model_tester = VARVQVAEModelTester(self)
        self.config_tester = ConfigTester(self, config_class=VARVQVAEConfig, has_text_modality=False,
                                          common_properties=["codebook_size", "codebook_embed_dim"])

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="a conv autoencoder: its hidden states are latent maps [B, C, s, s], not the [B, T, hidden] "
                          "sequences this test checks (tests/test_modeling_var.py checks them)")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="pixels in, no token embeddings to get or set (the codebook is the quantiser's, not an input "
                          "embedding)")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason=VQVAE_HAS_NO_TOKEN_EMBEDDINGS)
    def test_resize_tokens_embeddings(self):
        pass

    @unittest.skip(reason=VQVAE_HAS_NO_TOKEN_EMBEDDINGS)
    def test_resize_embeddings_untied(self):
        pass

    @unittest.skip(reason=VQVAE_HAS_NO_TOKEN_EMBEDDINGS)
    def test_resize_embeddings_untied_no_reinit_on_post_init(self):
        pass

    @unittest.skip(reason="forward returns the VQ term (`vq_loss`) of the tokenizer's loss, not a `loss`: the "
                          "reconstruction, perceptual and GAN terms are the training script's (tests/test_modeling_var.py "
                          "back-propagates `vq_loss`)")
    def test_training(self):
        pass
