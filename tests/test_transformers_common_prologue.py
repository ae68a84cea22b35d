"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`, from the sdist: see
`transformers_suite.py`) on tiny Prologue models. A mixin test that does not apply is skipped with its reason."""

import unittest

import pytest

from st_ar_hf import PrologueConfig, PrologueForImageGeneration, PrologueVQVAE, PrologueVQVAEConfig

from .transformers_suite import load_suite

suite = load_suite()
if isinstance(suite, str):
    pytest.skip(suite, allow_module_level=True)
ModelTesterMixin, ConfigTester, ids_tensor, floats_tensor = suite


class PrologueModelTester:
    def __init__(self, parent, batch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2):
        self.parent, self.batch_size, self.hidden_size = parent, batch_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.is_training = True
        config = self.get_config()
        self.vocab_size, self.num_classes = config.vocab_size, config.num_classes
        self.seq_length = config.sequence_length  # the class BOS + the sequence but its last token

    def get_config(self) -> PrologueConfig:
        return PrologueConfig(visual_vocab_size=64, prologue_vocab_size=16, num_prologue_tokens=4, num_visual_tokens=16,
                              hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                              num_attention_heads=self.num_attention_heads, rotary_dim=8, num_classes=10)

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length - 1], self.vocab_size)
        class_labels = ids_tensor([self.batch_size], self.num_classes)
        return self.get_config(), {"input_ids": input_ids, "class_labels": class_labels}


class PrologueForImageGenerationTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (PrologueForImageGeneration,)
    additional_model_inputs = ["class_labels"]  # passed with input_ids where the mixin builds its own inputs

    def setUp(self):
        self.model_tester = PrologueModelTester(self)
        self.config_tester = ConfigTester(self, config_class=PrologueConfig, hidden_size=64, num_attention_heads=2)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """The mixin gives labels to the classes of transformers' task mappings only. Ours are sequence tokens, which
        the input ids are (input t + 1 is token t): labels [B, T] train the logits of the first T positions."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels:
            inputs_dict["labels"] = inputs_dict["input_ids"].clone()
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="its forward runs for base models (MODEL_MAPPING_NAMES) only; what is left writes 0 into "
                          "eos_token_id, which Prologue derives from its vocabulary layout (the id after the visual and "
                          "prologue codes) as a read-only property")
    def test_model_forward_default_config_values(self):
        pass

    @unittest.skip(reason="the vocabulary (visual codes, prologue codes, EOS) follows the config's codebook sizes: "
                          "resize_token_embeddings refuses a new size with a ValueError (tests/test_prologue.py)")
    def test_resize_tokens_embeddings(self):
        pass

    @unittest.skip(reason="the vocabulary (visual codes, prologue codes, EOS) follows the config's codebook sizes: "
                          "resize_token_embeddings refuses a new size with a ValueError (tests/test_prologue.py)")
    def test_resize_embeddings_untied(self):
        pass

    @unittest.skip(reason="the vocabulary (visual codes, prologue codes, EOS) follows the config's codebook sizes: "
                          "resize_token_embeddings refuses a new size with a ValueError (tests/test_prologue.py)")
    def test_resize_embeddings_untied_no_reinit_on_post_init(self):
        pass


class PrologueVQVAEModelTester:
    def __init__(self, parent, batch_size=2, image_size=16, patch_size=4, num_prologue_tokens=4, hidden_size=32,
                 num_hidden_layers=2):
        self.parent, self.batch_size, self.image_size, self.patch_size = parent, batch_size, image_size, patch_size
        self.num_prologue_tokens, self.hidden_size, self.num_hidden_layers = num_prologue_tokens, hidden_size, num_hidden_layers
        self.seq_length = (image_size // patch_size) ** 2 + num_prologue_tokens  # the encoder's patches and queries
        self.is_training = True

    def get_config(self) -> PrologueVQVAEConfig:
        return PrologueVQVAEConfig(image_size=self.image_size, patch_size=self.patch_size, hidden_size=self.hidden_size,
                                   num_encoder_layers=self.num_hidden_layers, num_encoder_heads=2,
                                   decoder_hidden_size=32, num_decoder_layers=2, num_decoder_heads=2,
                                   num_prologue_tokens=self.num_prologue_tokens, codebook_size=64,
                                   prologue_codebook_size=16, codebook_embed_dim=4, rope_axes_dim=[4, 4, 8])

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size]) * 2 - 1
        return self.get_config(), {"pixel_values": pixel_values}


class PrologueVQVAETest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (PrologueVQVAE,)
    has_attentions = False

    def setUp(self):
        self.model_tester = PrologueVQVAEModelTester(self)
        self.config_tester = ConfigTester(self, config_class=PrologueVQVAEConfig, has_text_modality=False,
                                          common_properties=["codebook_size", "codebook_embed_dim"])

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="a base model without labels: its output carries the named VQ terms (codebook_loss, "
                          "commitment_loss), which training/ combines with its reconstruction, perceptual and "
                          "adversarial losses; the mixin skips base models (MODEL_MAPPING_NAMES) itself")
    def test_training(self):
        pass

    @unittest.skip(reason="pixel input: the tokenizer has no token embedding table to get, set or resize")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason="pixel input: the tokenizer has no token embedding table to get, set or resize")
    def test_resize_tokens_embeddings(self):
        pass
