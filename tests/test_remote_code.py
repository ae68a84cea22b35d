"""Saved folders load with `trust_remote_code=True` in a process where st_ar_hf cannot be imported: from a folder and
from a Hub repo (tests/fake_hub.py, a loopback stand-in for the Hub, serves the pushed files); with the package
installed, `STARPipeline.from_pretrained` loads them without running their code."""

import re
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DiffusionPipeline

from st_ar_hf import STARPipeline

from .fake_hub import FakeHub

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


def _run_hidden(code: str, tmp_path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `code` in a Python where st_ar_hf cannot be imported (offline unless `env` says otherwise)."""
    script = HIDE_PACKAGE + textwrap.dedent(code)  # a no-op on code already dedented in parts
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


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


FAMILIES = {  # family -> the fixtures of its tiny transformer and tokenizer
    "llamagen": ("tiny_gpt", "tiny_vq"),
    "var": ("tiny_var", "tiny_var_vqvae"),
    "flexvar": ("tiny_flexvar", "tiny_flexvae"),
    "prologue": ("tiny_prologue", "tiny_prologue_tokenizer"),
}


@pytest.fixture
def saved_pipelines(request, tmp_path) -> dict[str, dict]:
    """Each family's tiny pipeline saved with the default `save_pretrained` under tmp_path/<family>, and the tokens and
    images it samples for classes "class 3" and 7 from seed 0 (tmp_path/expected.pt)."""
    expected = {}
    for family, (transformer, vqvae) in FAMILIES.items():
        pipe = STARPipeline(transformer=request.getfixturevalue(transformer), vqvae=request.getfixturevalue(vqvae),
                            id2label={i: f"class {i}" for i in range(10)})
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(tmp_path / family)
        out = pipe(["class 3", 7], output_type="pt", generator=torch.Generator().manual_seed(0))
        expected[family] = {"tokens": out.tokens, "images": out.images}
    torch.save(expected, tmp_path / "expected.pt")
    return expected


SAMPLES_AS_EXPECTED = """
import torch
from diffusers import DiffusionPipeline
expected = torch.load("expected.pt")

def check(pipe, family, where):
    assert "st_ar_hf" not in type(pipe).__module__ + type(pipe.transformer).__module__ + type(pipe.vqvae).__module__
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["class 3", 7], output_type="pt", generator=torch.Generator().manual_seed(0))
    tokens, want = out.tokens, expected[family]["tokens"]
    same = all(map(torch.equal, tokens, want)) if isinstance(want, list) else torch.equal(tokens, want)
    assert same and torch.allclose(out.images, expected[family]["images"], atol=1e-6), (family, where)
"""


def test_default_folder_loads_with_the_package_without_running_its_code(saved_pipelines, tmp_path):
    """The folder carries code for users without the package; with it, STARPipeline.from_pretrained loads the
    package's classes and never runs the folder's code, and diffusers asks for trust_remote_code before it does."""
    folder = tmp_path / "llamagen"
    for code in (folder / "pipeline_star.py", folder / "transformer" / "modeling_llamagen.py"):
        code.write_text(code.read_text() + f"\nopen({str(tmp_path / 'ran')!r}, 'w').write('{code.name}')\n")
    pipe = STARPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["class 3", 7], output_type="pt", generator=torch.Generator().manual_seed(0))
    assert type(pipe) is STARPipeline and type(pipe.transformer).__module__.startswith("st_ar_hf.")
    assert torch.equal(out.tokens, saved_pipelines["llamagen"]["tokens"])
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folder)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(ValueError, match="unexpected keyword arguments \\['low_cpu_mem_usage'\\]"):
        STARPipeline.from_pretrained(folder, low_cpu_mem_usage=True)


def test_every_family_loads_as_remote_code_from_a_folder_and_again_after_saving(saved_pipelines, tmp_path):
    """Without the package: each family's default folder loads with DiffusionPipeline and samples the same tokens;
    each component folder holds one code file, and a pipeline loaded that way saves its code again."""
    for family in FAMILIES:
        component_code = sorted(p.name for p in (tmp_path / family).glob("*/*.py"))
        assert len(component_code) == 2, (family, component_code)
    result = _run_hidden(SAMPLES_AS_EXPECTED + textwrap.dedent(
        """
        for family in expected:
            pipe = DiffusionPipeline.from_pretrained(family, trust_remote_code=True)
            check(pipe, family, "folder")
            pipe.save_pretrained(f"{family}-again")
            check(DiffusionPipeline.from_pretrained(f"{family}-again", trust_remote_code=True), family, "saved again")
        print("remote pipelines ok")
        """), tmp_path)
    assert result.returncode == 0 and "remote pipelines ok" in result.stdout, result.stderr[-3000:]


def test_every_family_pushed_to_the_hub_loads_with_diffusers_from_its_repo_id_without_the_package(saved_pipelines,
                                                                                                  tmp_path):
    """`pipe.push_to_hub(repo_id)` (package installed) writes a repo that `DiffusionPipeline.from_pretrained(repo_id,
    trust_remote_code=True)` loads from a fresh cache without the package, through diffusers' own download (which
    fetches one code file per component), and whose card snippet runs as written."""
    hub = tmp_path / "hub"
    with FakeHub(hub) as endpoint:
        env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "fake", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        pushed = subprocess.run([sys.executable, "-c", textwrap.dedent(
            """
            from st_ar_hf import STARPipeline
            for family in ("llamagen", "var", "flexvar", "prologue"):
                STARPipeline.from_pretrained(family).push_to_hub(f"org/{family}")
            """)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
            env={**env, "HF_HOME": str(tmp_path / "pusher_home"), "PATH": "/usr/bin:/bin"})
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        card = (hub / "org" / "llamagen" / "README.md").read_text()
        snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
        assert 'DiffusionPipeline.from_pretrained("org/llamagen", trust_remote_code=True)' in snippet, snippet
        result = _run_hidden(SAMPLES_AS_EXPECTED + textwrap.dedent(
            """
            for family in expected:
                check(DiffusionPipeline.from_pretrained(f"org/{family}", trust_remote_code=True), family, "hub")
            """) + snippet + 'import os\nassert os.path.isfile("sample.png")\nprint("hub pipelines ok")\n',
            tmp_path, {**env, "HF_HOME": str(tmp_path / "fresh_home")})
    assert result.returncode == 0 and "hub pipelines ok" in result.stdout, result.stderr[-3000:]
