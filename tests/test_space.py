"""The Spaces demo (spaces/app.py) on a tiny random pipeline: its generate function, the app served on loopback and
called through gradio_client, the script form against a loopback Hub, a real headless browser, and the Space card."""

import importlib.util
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no calls home, from this process or the app's subprocess
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from st_ar_hf import STARPipeline  # noqa: E402

from .fake_hub import FakeHub  # noqa: E402

SPACE = Path(__file__).parents[1] / "spaces"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# a valid request: the tiny model knows ImageNet's first ten classes (1 goldfish, 9 ostrich), a 4x4 grid of 64 codes
REQUEST = dict(class_ids=[1, 9], seed=5, guidance_scale=2.0, temperature=1.0, top_k=0, top_p=1.0, num_images=2)


@pytest.fixture
def model_dir(tiny_gpt, tiny_vq, tmp_path) -> str:
    """A saved tiny STARPipeline (10 classes, 8x8 images) with the default ImageNet id2label."""
    STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq).save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


@pytest.fixture
def app(model_dir, monkeypatch):
    """spaces/app.py imported the way Spaces imports it, with its model from STAR_MODEL."""
    monkeypatch.setenv("STAR_MODEL", model_dir)
    spec = importlib.util.spec_from_file_location("space_app", SPACE / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pixels(image) -> np.ndarray:
    return np.asarray(PIL.Image.open(image) if isinstance(image, (str, Path)) else image)


def test_generate_draws_each_image_from_its_own_seed(app, model_dir):
    steps = []
    gallery = app.generate(model_dir, **REQUEST, progress=lambda done, **kwargs: steps.append(done))
    assert not type(app.load_pipeline(model_dir)).__module__.startswith("st_ar_hf")  # the folder's own code
    assert [caption for _, caption in gallery] == ["goldfish, seed 5", "goldfish, seed 6", "ostrich, seed 7",
                                                   "ostrich, seed 8"]
    assert all(image.size == (8, 8) for image, _ in gallery)
    assert steps == [(step, 16) for step in range(17)]  # the page's progress follows every decoded token
    again = app.generate(model_dir, **REQUEST)
    assert all(np.array_equal(pixels(a), pixels(b)) for (a, _), (b, _) in zip(gallery, again))
    alone = app.generate(model_dir, **REQUEST | dict(class_ids=[9], seed=7, num_images=1))  # the caption's seed
    assert np.array_equal(pixels(alone[0][0]), pixels(gallery[2][0]))
    other = app.generate(model_dir, **REQUEST | dict(seed=6))
    assert not np.array_equal(pixels(other[0][0]), pixels(gallery[0][0]))


def test_generate_serves_a_scale_wise_model(app, tiny_flexvar, tiny_flexvae, tmp_path):
    """The same app on a FlexVAR pipeline: progress follows the scales, the page describes scale-wise decoding."""
    STARPipeline(transformer=tiny_flexvar, vqvae=tiny_flexvae).save_pretrained(tmp_path / "flexvar")
    steps = []
    gallery = app.generate(str(tmp_path / "flexvar"), **REQUEST | dict(guidance_scale=2.5),
                           progress=lambda done, **kwargs: steps.append(done))
    assert len(gallery) == 4 and all(image.size == (8, 8) for image, _ in gallery)
    assert steps == [(step, 3) for step in range(4)]  # 1x1, 2x2, 4x4
    demo = app.build_demo(str(tmp_path / "flexvar"))
    text = " ".join(str(block.value) for block in demo.blocks.values() if isinstance(block, gr.Markdown))
    assert "FlexVARForImageGeneration" in text and "scale by scale" in text
    slider = next(block for block in demo.blocks.values() if getattr(block, "label", "") == "Guidance scale (0 = none)")
    assert slider.value == 2.5  # FlexVAR's default cfg


@pytest.mark.parametrize("change, message", [
    (dict(class_ids=[]), "Pick at least one class"),
    (dict(class_ids=None), "Pick at least one class"),
    (dict(class_ids=[10]), "Classes must be a list of class ids from the picker, got \\[10\\]"),
    (dict(class_ids=["goldfish"]), "Classes must be"),
    (dict(class_ids=[True]), "Classes must be"),
    (dict(class_ids=[[1]]), "Classes must be"),
    (dict(class_ids=1), "Classes must be"),
    (dict(num_images=9), "Images per class must be an integer from 1 to 8, got 9"),
    (dict(class_ids=[1, 2, 3], num_images=3), "At most 8 images per request: 3 classes x 3 images"),
    (dict(seed=-1), "Seed must be an integer from 0"),
    (dict(seed=0.5), "Seed must be an integer"),
    (dict(seed=None), "Seed must be an integer"),
    (dict(guidance_scale=10.5), "Guidance scale must be a number from 0.0 to 10.0, got 10.5"),
    (dict(guidance_scale=math.nan), "Guidance scale"),
    (dict(guidance_scale=math.inf), "Guidance scale"),
    (dict(seed=10**400), "Seed must be an integer"),
    (dict(guidance_scale="2"), "Guidance scale"),
    (dict(temperature=0), "Temperature must be a number from 0.05 to 2.0"),
    (dict(top_k=65), "Top-k must be an integer from 0 to 64"),
    (dict(top_p=0.0), "Top-p must be a number from 0.05 to 1.0"),
])
def test_generate_rejects_bad_input_with_a_message_naming_it(app, model_dir, change, message):
    with pytest.raises(gr.Error, match=message):
        app.generate(model_dir, **REQUEST | change)


def test_a_bad_model_fails_at_start_up_with_a_clear_error(app, tiny_gpt, tmp_path):
    with pytest.raises(ValueError, match="cannot load a STARPipeline from '.*missing'"):
        app.build_demo(str(tmp_path / "missing"))
    tiny_gpt.save_pretrained(tmp_path / "gpt_only")  # a model, not a pipeline
    with pytest.raises(ValueError, match="cannot load a STARPipeline from .*model_index.json"):
        app.build_demo(str(tmp_path / "gpt_only"))


def test_app_on_loopback_answers_gradio_client(app, model_dir):
    assert isinstance(app.demo, gr.Blocks)
    _, url, _ = app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                                quiet=True)
    try:
        client = gradio_client.Client(url, verbose=False)
        result = client.predict(**REQUEST, api_name="/generate")
        direct = app.generate(model_dir, **REQUEST)
        assert [item["caption"] for item in result] == [caption for _, caption in direct]
        assert all(np.array_equal(pixels(item["image"]), pixels(image)) for item, (image, _) in zip(result, direct))
        defaults = client.predict(class_ids=[9], api_name="/generate")  # the UI's defaults: 4 images, seed 0
        assert [item["caption"] for item in defaults] == [f"ostrich, seed {i}" for i in range(4)]
        for change, message in [(dict(guidance_scale=50.0), "Guidance scale must be a number from 0.0 to 10.0"),
                                (dict(class_ids=[]), "Pick at least one class"),
                                (dict(num_images=1000), "Images per class must be an integer from 1 to 8")]:
            with pytest.raises(gradio_client.exceptions.AppError, match=message) as error:
                client.predict(**REQUEST | change, api_name="/generate")
            assert "Traceback" not in str(error.value)
    finally:
        app.demo.close()


def test_script_serves_a_hub_repo_and_refuses_a_missing_one(model_dir, tmp_path):
    """`python spaces/app.py --model <repo id>` against a loopback stand-in for the Hub (tests/fake_hub.py)."""
    STARPipeline.from_pretrained(model_dir).save_pretrained(tmp_path / "hub" / "org" / "st-ar-tiny")
    env = os.environ | {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    port = free_port()
    with FakeHub(tmp_path / "hub") as endpoint:
        env["HF_ENDPOINT"] = endpoint
        missing = subprocess.run([sys.executable, SPACE / "app.py", "--model", "org/no-such-model"],
                                 capture_output=True, text=True, env=env, timeout=120)
        assert missing.returncode == 2
        assert "error: --model: cannot load a STARPipeline from 'org/no-such-model'" in missing.stderr
        assert "Traceback" not in missing.stderr
        with open(tmp_path / "server.log", "w") as log:
            server = subprocess.Popen([sys.executable, SPACE / "app.py", "--model", "org/st-ar-tiny", "--host",
                                       "127.0.0.1", "--port", str(port)], stdout=log, stderr=log, env=env)
            try:
                url = f"http://127.0.0.1:{port}/"
                deadline = time.monotonic() + 120
                while server.poll() is None and time.monotonic() < deadline:
                    try:
                        urllib.request.urlopen(url, timeout=5)
                        break
                    except OSError:
                        time.sleep(0.5)
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                result = gradio_client.Client(url, verbose=False).predict(class_ids=[1], num_images=2,
                                                                          api_name="/generate")
                assert [item["caption"] for item in result] == ["goldfish, seed 0", "goldfish, seed 1"]
            finally:
                server.terminate()
                server.wait(timeout=30)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_browser_picks_a_class_and_shows_the_images(app, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    _, url, _ = app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                                quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url)
            page.locator("#classes [title=Clear]").click()  # drop the default class, then search for another
            page.locator("#classes input").fill("ostrich")
            page.locator("[role=option]", has_text="ostrich, Struthio camelus (9)").click()
            page.keyboard.press("Escape")
            page.locator("#generate").click()
            page.wait_for_function("() => { const images = [...document.querySelectorAll('#gallery img')];"
                                   " return images.length === 4 && images.every(i => i.complete && i.naturalWidth); }",
                                   timeout=30_000)
            sizes = page.eval_on_selector_all("#gallery img", "images => images.map(i => [i.naturalWidth, i.alt])")
            assert sizes == [[8, f"ostrich, seed {i}"] for i in range(4)]
            page.screenshot(path=tmp_path / "space.png")
            page.locator("#gallery").screenshot(path=tmp_path / "gallery.png")

            page.locator("#classes [title=Clear]").click()
            page.locator("#generate").click()
            page.wait_for_function("() => { const toast = document.querySelector('[data-testid=toast-body]');"
                                   " return toast && getComputedStyle(toast).opacity === '1'; }",  # faded in
                                   timeout=10_000)
            assert page.get_by_test_id("toast-text").inner_text() == "Pick at least one class."
            assert "Traceback" not in page.content()
            page.screenshot(path=tmp_path / "space_error.png")
            browser.close()
    finally:
        app.demo.close()
    screenshot = pixels(tmp_path / "space.png")[..., :3]
    gallery = pixels(tmp_path / "gallery.png")[..., :3]
    assert screenshot.shape == (800, 1200, 3) and screenshot.std() > 20  # a page, not a blank canvas
    # the samples are random colour fields: the gallery holds far more colours than an empty gallery's few greys
    assert len(np.unique(gallery.reshape(-1, 3), axis=0)) > 500 and gallery.std() > 20


def test_space_readme_is_the_rendered_card(app):
    from huggingface_hub import SpaceCard

    from st_ar_hf.model_cards import space_card

    readme = SPACE / "README.md"
    card = SpaceCard.load(readme)
    assert card.data.sdk == "gradio" and card.data.sdk_version == gr.__version__ == "6.31.0"
    assert card.data.app_file == "app.py" and (SPACE / card.data.app_file).is_file()
    assert card.data.models == [app.DEFAULT_MODEL] and card.data.get("suggested_hardware") == "a10g-small"
    assert len(card.data.get("short_description")) <= 60  # the Hub's limit
    assert readme.read_text() == str(space_card(app.DEFAULT_MODEL))  # regenerate it with space_card(...).save(...)
    # Spaces installs gradio itself; the app runs the model repo's own code (no package of ours, which no index
    # serves) on the diffusers, transformers and torch that constraints.txt pins
    requirements = [line for line in (SPACE / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    pins = [line for line in (SPACE.parent / "constraints.txt").read_text().splitlines() if "==" in line]
    assert sorted(requirements) == sorted(pins) and not any(line.startswith("st-ar-hf") for line in requirements)


def test_prologue_model_keeps_the_prologue_and_resamples_the_details(app, tiny_prologue, tiny_prologue_tokenizer,
                                                                     tmp_path):
    """The Space on a Prologue pipeline: the slider is the visual scale of the model's split CFG, and "resample the
    details" keeps each image's prologue (drawn from its seed) while its visual tokens come from the details seed."""
    model = str(tmp_path / "prologue")
    STARPipeline(transformer=tiny_prologue, vqvae=tiny_prologue_tokenizer).save_pretrained(model)
    steps = []
    request = REQUEST | dict(class_ids=[1], num_images=2)
    gallery = app.generate(model, **request, progress=lambda done, **kwargs: steps.append(done))
    assert [caption for _, caption in gallery] == ["goldfish, seed 5", "goldfish, seed 6"]
    assert steps[-1] == (21, 21)  # 4 prologue tokens, the EOS and 16 visual tokens
    steps.clear()
    details = app.resample_details(model, **request, detail_seed=100, progress=lambda done, **kwargs: steps.append(done))
    assert [caption for _, caption in details] == ["goldfish, seed 5, details 100", "goldfish, seed 6, details 101"]
    assert steps[-1] == (21 + 16, 21 + 16)
    pipe = app.load_pipeline(model)
    first = pipe([1, 1], guidance_scale=(0.7, 2.0, 0.2), generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                 output_type="latent")
    again = pipe([1, 1], guidance_scale=(0.7, 2.0, 0.2), prologue_tokens=first.prologue_tokens,
                 generator=[torch.Generator().manual_seed(s) for s in (100, 101)])
    assert all(np.array_equal(pixels(a), pixels(b)) for (a, _), b in zip(details, again.images))
    with pytest.raises(gr.Error, match="Details seed must be an integer"):
        app.resample_details(model, **request, detail_seed=-1)
    demo = app.build_demo(model)
    labels = [getattr(block, "label", "") for block in demo.blocks.values()]
    assert "Guidance scale (1 = none) of the visual tokens" in labels and "Details seed" in labels


def test_only_prologue_models_resample_details(app, model_dir):
    with pytest.raises(gr.Error, match="Only Prologue models have a prologue to keep"):
        app.resample_details(model_dir, **REQUEST, detail_seed=3)
