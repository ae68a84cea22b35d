r"""diffusers' own common pipeline tests (`PipelineTesterMixin`, tests/pipelines/test_pipelines_common.py of the
diffusers repository) on STARPipeline, one adapter per family, written after DiT's (tests/pipelines/dit/test_dit.py):
tiny components, one class label, images as numpy. A mixin test that does not apply to autoregressive sampling is
skipped here with its reason; the tests that need an accelerator are skipped by the mixin itself on a CPU-only machine.

diffusers' sdist does not ship its tests: they are read from a diffusers checkout whose tests/ folder
`DIFFUSERS_TESTS_DIR` names, imported as the package `diffusers_tests` (ours is `tests`). Its imports need
`requests-mock` (diffusers' test extra). One thread keeps the tiny models fast on a busy CPU:

    DIFFUSERS_TESTS_DIR=/path/to/diffusers/tests OMP_NUM_THREADS=1 \
        python -m pytest -p no:xdist tests/test_diffusers_common.py
"""

import importlib.util
import os
import sys
import unittest
from pathlib import Path

import pytest
import torch

from st_ar_hf import (
    FlexVARForImageGeneration, LlamaGenForImageGeneration, LlamaGenVQVAE, PrologueForImageGeneration, PrologueVQVAE,
    STARPipeline, VARForImageGeneration, VARVQVAE,
)

from .conftest import (
    informative, tiny_flexvar_config, tiny_gpt_config, tiny_prologue_config, tiny_prologue_tokenizer_config,
    tiny_var_config, tiny_var_vqvae_config, tiny_vq_config,
)

TESTS_DIR = os.environ.get("DIFFUSERS_TESTS_DIR")
if not TESTS_DIR or not (Path(TESTS_DIR) / "pipelines" / "test_pipelines_common.py").is_file():
    pytest.skip("diffusers' common pipeline tests: set DIFFUSERS_TESTS_DIR to the tests/ folder of a diffusers "
                "checkout (with requests-mock installed) to run them", allow_module_level=True)


def import_diffusers_tests(tests_dir: Path):
    """The checkout's tests/ folder as the package `diffusers_tests` (its modules import each other relatively)."""
    if "diffusers_tests" not in sys.modules:
        spec = importlib.util.spec_from_file_location("diffusers_tests", tests_dir / "__init__.py",
                                                      submodule_search_locations=[str(tests_dir)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["diffusers_tests"] = package
        spec.loader.exec_module(package)
    from diffusers_tests.pipelines import pipeline_params
    from diffusers_tests.pipelines.test_pipelines_common import PipelineTesterMixin

    return PipelineTesterMixin, pipeline_params


PipelineTesterMixin, pipeline_params = import_diffusers_tests(Path(TESTS_DIR).resolve())


class STARPipelineTesterMixin(PipelineTesterMixin):
    """What every family's adapter shares; `get_dummy_components` is the family's."""

    pipeline_class = STARPipeline
    params = pipeline_params.CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS
    batch_params = pipeline_params.CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS
    # the number of steps is the model's (its tokens, or its scales) and the tokens are drawn from the generators,
    # with no initial noise `latents` to pass in
    required_optional_params = PipelineTesterMixin.required_optional_params - {"num_inference_steps", "latents"}

    def get_dummy_inputs(self, device, seed=0):
        return {"class_labels": [1], "generator": torch.Generator(device="cpu").manual_seed(seed), "output_type": "np"}

    def test_inference_batch_single_identical(self):
        self._test_inference_batch_single_identical(batch_size=3, additional_params_copy_to_batched_inputs=[])

    @unittest.skip(reason="attention slicing splits diffusers attention processors; the transformers here have none, "
                          "and decoding attends over a KV cache one step at a time")
    def test_attention_slicing_forward_pass(self):
        pass

    @unittest.skip(reason="xformers replaces diffusers attention processors; the transformers here use PyTorch's SDPA")
    def test_xformers_attention_forwardGenerator_pass(self):
        pass


class LlamaGenPipelineFastTests(STARPipelineTesterMixin, unittest.TestCase):
    def get_dummy_components(self):
        torch.manual_seed(0)
        transformer = LlamaGenForImageGeneration(tiny_gpt_config()).eval()
        torch.nn.init.normal_(transformer.lm_head.weight, std=0.5)
        return {"transformer": transformer, "vqvae": LlamaGenVQVAE(tiny_vq_config()).eval()}


class VARPipelineFastTests(STARPipelineTesterMixin, unittest.TestCase):
    def get_dummy_components(self):
        torch.manual_seed(0)
        vqvae = VARVQVAE(tiny_var_vqvae_config()).eval()
        return {"transformer": informative(VARForImageGeneration(tiny_var_config())), "vqvae": vqvae}


class FlexVARPipelineFastTests(STARPipelineTesterMixin, unittest.TestCase):
    def get_dummy_components(self):
        torch.manual_seed(0)
        vqvae = LlamaGenVQVAE(tiny_vq_config(codebook_embed_dim=8)).eval()
        return {"transformer": informative(FlexVARForImageGeneration(tiny_flexvar_config())), "vqvae": vqvae}


class ProloguePipelineFastTests(STARPipelineTesterMixin, unittest.TestCase):
    def get_dummy_components(self):
        return {"transformer": informative(PrologueForImageGeneration(tiny_prologue_config())),
                "vqvae": informative(PrologueVQVAE(tiny_prologue_tokenizer_config()))}
