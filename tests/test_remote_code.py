"""A saved directory loads with `trust_remote_code=True` in a process where st_ar_hf cannot be imported."""

import subprocess
import sys
import textwrap

import torch

HIDE_PACKAGE = textwrap.dedent(
    """
    import sys
    class _Hide:
        def find_spec(self, name, path=None, target=None):
            if name == "st_ar_hf" or name.startswith("st_ar_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
    sys.meta_path.insert(0, _Hide())
    """
)


def _run_hidden(code: str, tmp_path) -> subprocess.CompletedProcess:
    script = HIDE_PACKAGE + textwrap.dedent(code)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_gpt_and_vq_load_as_remote_code_without_the_package(tiny_gpt, tiny_vq, tmp_path):
    tiny_gpt.save_pretrained(tmp_path / "gpt")
    tiny_vq.save_pretrained(tmp_path / "vq")
    tokens = torch.randint(0, 64, (2, 15), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 10])
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.save({"tokens": tokens, "labels": labels, "pixels": pixels}, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save({"logits": tiny_gpt(tokens, labels).logits, "indices": tiny_vq.encode(pixels).indices},
                   tmp_path / "expected.pt")
    result = _run_hidden(
        """
        import torch
        from transformers import AutoModel
        try:
            import st_ar_hf
            raise SystemExit("st_ar_hf was importable")
        except ModuleNotFoundError:
            pass
        inputs, expected = torch.load("inputs.pt"), torch.load("expected.pt")
        gpt = AutoModel.from_pretrained("gpt", trust_remote_code=True)
        vq = AutoModel.from_pretrained("vq", trust_remote_code=True)
        assert type(gpt).__module__.startswith("transformers_modules"), type(gpt).__module__
        with torch.no_grad():
            assert torch.allclose(gpt(inputs["tokens"], inputs["labels"]).logits, expected["logits"], atol=1e-6)
            assert torch.equal(vq.encode(inputs["pixels"]).indices, expected["indices"])
        print("remote code ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0 and "remote code ok" in result.stdout, result.stderr[-3000:]


def test_pipeline_remote_code_layout_loads_without_the_package(tiny_gpt, tiny_vq, tmp_path):
    from st_ar_hf import STARPipeline

    pipe = STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label={i: f"class {i}" for i in range(10)})
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "pipe", remote_code=True)
    expected = pipe(["class 3", 7], output_type="pt", generator=torch.Generator().manual_seed(0))
    torch.save({"tokens": expected.tokens, "images": expected.images}, tmp_path / "expected.pt")
    result = _run_hidden(
        """
        import json, torch
        from diffusers import DiffusionPipeline
        expected = torch.load("expected.pt")
        index = json.load(open("pipe/model_index.json"))
        assert index["_class_name"] == ["pipeline_star", "STARPipeline"], index["_class_name"]
        pipe = DiffusionPipeline.from_pretrained("pipe", trust_remote_code=True)
        assert type(pipe).__name__ == "STARPipeline" and "st_ar_hf" not in type(pipe).__module__
        pipe.set_progress_bar_config(disable=True)
        out = pipe(["class 3", 7], output_type="pt", generator=torch.Generator().manual_seed(0))
        assert torch.equal(out.tokens, expected["tokens"]) and torch.allclose(out.images, expected["images"], atol=1e-6)
        print("remote pipeline ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0 and "remote pipeline ok" in result.stdout, result.stderr[-3000:]


def test_scale_wise_pipelines_load_as_remote_code_without_the_package(tiny_var, tiny_var_vqvae, tiny_flexvar,
                                                                      tiny_flexvae, tmp_path):
    from st_ar_hf import STARPipeline

    expected = {}
    for name, transformer, vqvae in (("var", tiny_var, tiny_var_vqvae), ("flexvar", tiny_flexvar, tiny_flexvae)):
        pipe = STARPipeline(transformer=transformer, vqvae=vqvae, id2label={i: f"class {i}" for i in range(10)})
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(tmp_path / name, remote_code=True)
        out = pipe(["class 3", 7], output_type="pt", generator=torch.Generator().manual_seed(0))
        expected[name] = {"tokens": out.tokens, "images": out.images}
    torch.save(expected, tmp_path / "expected.pt")
    result = _run_hidden(
        """
        import torch
        from diffusers import DiffusionPipeline
        expected = torch.load("expected.pt")
        for name in ("var", "flexvar"):
            pipe = DiffusionPipeline.from_pretrained(name, trust_remote_code=True)
            assert "st_ar_hf" not in type(pipe.transformer).__module__, type(pipe.transformer).__module__
            pipe.set_progress_bar_config(disable=True)
            out = pipe(["class 3", 7], output_type="pt", generator=torch.Generator().manual_seed(0))
            assert all(torch.equal(a, b) for a, b in zip(out.tokens, expected[name]["tokens"])), name
            assert torch.allclose(out.images, expected[name]["images"], atol=1e-6), name
        print("remote scale-wise pipelines ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0 and "remote scale-wise pipelines ok" in result.stdout, result.stderr[-3000:]


def test_prologue_pipeline_loads_as_remote_code_without_the_package(tiny_prologue, tiny_prologue_tokenizer, tmp_path):
    """The AR's modeling file imports the tokenizer's (the shared block): both travel with the transformer."""
    from st_ar_hf import STARPipeline

    pipe = STARPipeline(transformer=tiny_prologue, vqvae=tiny_prologue_tokenizer,
                        id2label={i: f"class {i}" for i in range(10)})
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "prologue", remote_code=True)
    assert (tmp_path / "prologue" / "transformer" / "modeling_prologue_tokenizer.py").is_file()
    out = pipe(["class 3", 7], output_type="pt", generator=torch.Generator().manual_seed(0))
    torch.save({"tokens": out.tokens, "prologue": out.prologue_tokens, "images": out.images}, tmp_path / "expected.pt")
    result = _run_hidden(
        """
        import torch
        from diffusers import DiffusionPipeline
        expected = torch.load("expected.pt")
        pipe = DiffusionPipeline.from_pretrained("prologue", trust_remote_code=True)
        assert "st_ar_hf" not in type(pipe.transformer).__module__, type(pipe.transformer).__module__
        pipe.set_progress_bar_config(disable=True)
        out = pipe(["class 3", 7], output_type="pt", generator=torch.Generator().manual_seed(0))
        again = pipe([3, 3], prologue_tokens=out.prologue_tokens[:1].repeat(2, 1), output_type="pt")
        assert torch.equal(out.tokens, expected["tokens"]) and torch.equal(out.prologue_tokens, expected["prologue"])
        assert torch.allclose(out.images, expected["images"], atol=1e-6) and again.images.shape == (2, 3, 32, 32)
        print("remote prologue pipeline ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0 and "remote prologue pipeline ok" in result.stdout, result.stderr[-3000:]
