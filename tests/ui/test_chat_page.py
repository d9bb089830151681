"""The /ui chat page in headless Chromium against a real gateway process (classifier, chat model and
a tiny HealthGPT for the image tasks).

A node script (``chat_page.mjs``, npm ``playwright-core`` driving Debian's ``/usr/bin/chromium``)
plays the user; this test asserts on what it recorded. Screenshots of every state are left in the
test's tmp dir; set ``EYEOPS_UI_SCREENSHOT=docs/ui.png`` to also copy the classify state there.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
from eyeops_testing.llm_tiny import KB, save_tiny_llm, tiny_recipe  # noqa: E402 — the serving and LLM rooms' test helpers
from eyeops_testing.serving import (  # noqa: E402
    ADMIN_KEY,
    CHAT_KEY,
    ServerProcess,
    _train_save_register,
    server_env,
)
from eyeops_testing.vlm_tiny import tiny_healthgpt_recipe  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
PLAYWRIGHT = HERE / "node_modules" / "playwright-core"
QUESTION = "What does the classifier result suggest?"


def _browser_or_skip() -> str:
    node = shutil.which("node")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed: apt-get install chromium (`make install` as root)")
    if node is None:
        pytest.skip("node is not installed: the page test drives Chromium with npm playwright-core")
    if not PLAYWRIGHT.is_dir():
        pytest.skip("npm playwright-core missing: run `npm ci --prefix tests/ui` (part of `make install`)")
    return node


class _Gateway(ServerProcess):
    """``ui_gateway.py PORT REF…`` — create_app over several models, served by uvicorn."""

    def __init__(self, refs: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / "ui_gateway.py"), str(port), *refs],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )


ANSWER = "Glaucoma is damage to the optic nerve, often with raised eye pressure."


def _taught_tiny_llm(path: Path) -> Path:
    """The LLM room's tiny Llama, taught for a few seconds to answer in words after chats shaped like
    the page's (classify turn, classifier summary, question); untrained, it streams only whitespace.
    Loss is on the final answer only, so any history the page sends still ends in words."""
    import random

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    save_tiny_llm(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path)
    rng = random.Random(0)
    rows = []
    for i in range(10):
        labels = ", ".join(rng.sample("NDGCAHMO", rng.randint(1, 5)))
        history = [
            {"role": "user", "content": "Classify the attached image(s)."},
            {"role": "assistant", "content": f"Classifier eyeops-serve-test on x.jpg: findings {labels}"},
        ][: 2 * (i % 2)]
        question = [QUESTION, *(f"What is {topic}?" for topic in KB)][i % 5]
        prompt = tokenizer.apply_chat_template(
            [*history, {"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        rows.append((prompt, f"{ANSWER}<|im_end|>"))
    tokens = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    encoded = [(tokens(p), tokens(a)) for p, a in rows]
    width = max(len(p) + len(a) for p, a in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    targets = torch.full((len(encoded), width), -100)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (p, a) in enumerate(encoded):
        ids[row, : len(p) + len(a)] = torch.tensor(p + a)
        targets[row, len(p) : len(p) + len(a)] = torch.tensor(a)
        mask[row, : len(p) + len(a)] = 1
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=targets).loss.backward()
        optimizer.step()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """The registered classifier (@champion, via MLflow), a tiny chat LLM and a tiny HealthGPT behind one
    gateway."""
    _browser_or_skip()

    from eyeops.config import get_settings
    from eyeops.families import get_family
    from eyeops.recipes import parse_recipe
    from eyeops.serve.local import free_port

    root = tmp_path_factory.mktemp("ui-root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EYEOPS_STORAGE_ROOT", str(root))
        get_settings.cache_clear()
        try:
            registered = _train_save_register(root)
        finally:
            get_settings.cache_clear()

    base = _taught_tiny_llm(tmp_path_factory.mktemp("ui-tiny-base"))
    recipe = parse_recipe(tiny_recipe(base, stages=[{"name": "sft", "trainable": ["all"], "max_steps": 1}]))
    family = get_family("llm")
    model = family.build_model(recipe)
    llm_dir = tmp_path_factory.mktemp("ui-tiny-llm")
    family.save(model, recipe, llm_dir)

    healthgpt_recipe = parse_recipe(tiny_healthgpt_recipe(base))
    healthgpt = get_family("healthgpt")
    healthgpt_dir = tmp_path_factory.mktemp("ui-tiny-healthgpt")
    healthgpt.save(healthgpt.build_model(healthgpt_recipe), healthgpt_recipe, healthgpt_dir)

    refs = [f"{registered.model_name}@champion", str(llm_dir), str(healthgpt_dir)]
    log_path = tmp_path_factory.mktemp("ui-gateway") / "server.log"
    proc = _Gateway(refs, server_env(root), free_port(), log_path)
    try:
        yield proc.wait_ready(), registered
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """The real fundus photograph from scikit-image (JPEG), a TIFF of it, and a file that is no image."""
    from skimage import data

    folder = tmp_path_factory.mktemp("ui-images")
    retina = Image.fromarray(data.retina())
    retina.save(folder / "retina.jpg", format="JPEG", quality=90)
    retina.resize((256, 256)).save(folder / "retina-small.tif", format="TIFF")
    (folder / "notes.txt").write_text("not an image\n")
    return {
        "retina": folder / "retina.jpg",
        "tiff": folder / "retina-small.tif",
        "text": folder / "notes.txt",
    }


@pytest.fixture(scope="module")
def page_run(gateway, images, tmp_path_factory) -> tuple[dict, Path]:
    node = _browser_or_skip()
    server, registered = gateway
    out_dir = tmp_path_factory.mktemp("ui-screens")
    config = {
        "url": server.url,
        "chromium": str(CHROMIUM),
        "key": ADMIN_KEY,
        "chatKey": CHAT_KEY,
        "wrongKey": "not-a-valid-key-0000000000",
        "classifier": registered.model_name,
        "chat": "tiny-llm",
        "healthgpt": "tiny-healthgpt",
        "question": QUESTION,
        "retina": str(images["retina"]),
        "tiff": str(images["tiff"]),
        "notImage": str(images["text"]),
        "outDir": str(out_dir),
    }
    run = subprocess.run(
        [node, str(HERE / "chat_page.mjs")],
        env={**os.environ, "UI_TEST_CONFIG": json.dumps(config)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE,
    )
    result_file = out_dir / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    assert run.returncode == 0, (
        f"browser script failed:\n{run.stderr[-4000:]}\nrecorded: {json.dumps(result)[:2000]}"
        f"\nserver log:\n{server.log()}"
    )
    if target := os.environ.get("EYEOPS_UI_SCREENSHOT"):
        shutil.copyfile(out_dir / "classify.png", target)
    return result, out_dir


def test_classify_shows_bar_chart_and_model_version(page_run, gateway):
    result, out_dir = page_run
    _, registered = gateway
    assert result["ui"]["finalUrl"].endswith("/ui/")
    assert not result["external"], f"page fetched from outside the gateway: {result['external']}"
    assert not result["pageErrors"], result["pageErrors"]
    assert any(f"{registered.model_name} · v{registered.version} @champion" in m for m in result["models"])
    assert any(m.startswith("tiny-llm · local") for m in result["models"])
    assert ["classify", False, True] in result["classifyTasks"]
    assert ["ask", True, False] in result["classifyTasks"]  # the classifier cannot chat
    assert "notes.txt: not a JPEG, PNG, TIFF or DICOM image" in result["notImageAlert"]
    assert result["pending"] == ["1. retina.jpg", "2. retina-small.tif"]

    api = result["classifyApi"]
    assert result["classifyStatus"] == 200 and len(api["results"]) == 2 == len(result["charts"])
    assert api["model"]["version"] == registered.version
    for chart, item in zip(result["charts"], api["results"], strict=True):
        assert [b["label"] for b in chart["bars"]] == list(item["probabilities"])  # the model's label order
        for bar in chart["bars"]:
            assert bar["probability"] == pytest.approx(item["probabilities"][bar["label"]])
            assert bar["width"] == pytest.approx(330 * bar["probability"], abs=0.01)
        if item["out_of_distribution"]:  # the synthetic-trained model says it does not know (issue 17)
            assert "outside what this model was trained on" in chart["findings"] and not item["findings"]
            continue
        named = item["findings"] or [t["label"] for t in item["top"]]
        assert all(label in chart["findings"] for label in named)
    assert [item["out_of_distribution"] for item in api["results"]] == [True, True]  # a real photograph
    assert result["charts"][0]["title"] == "Image 1: retina.jpg"
    assert result["charts"][1]["title"] == "Image 2: retina-small.tif"
    stamp = result["classifyStamp"]
    assert f"{registered.model_name} · version {registered.version} · @champion" in stamp
    assert "recipe serve-test" in stamp
    assert result["userTurnImages"] == 2
    assert (out_dir / "classify.png").stat().st_size > 20_000


def test_question_streams_and_keeps_the_conversation(page_run):
    result, out_dir = page_run
    assert ["ask", False, True] in result["chatTasks"] and ["classify", True, False] in result["chatTasks"]
    request = result["chatRequest"]
    assert request["model"] == "tiny-llm" and request["stream"] is True
    roles = [m["role"] for m in request["messages"]]
    assert roles[-1] == "user" and request["messages"][-1]["content"] == QUESTION
    # The classifier's answer is part of the history; images are not sent to a text-only model.
    assert roles[:2] == ["user", "assistant"]
    assert request["messages"][0]["content"] == "Classify the attached image(s)."
    assert request["messages"][1]["content"].startswith("Classifier eyeops-serve-test on retina.jpg: ")
    assert all(isinstance(m["content"], str) for m in request["messages"])

    assert result["chatStatus"] == 200 and result["chatContentType"].startswith("text/event-stream")
    deltas = []
    for line in result["sse"].splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                deltas.append(choice["delta"].get("content") or "")
    sent = "".join(deltas)
    assert sent.strip(), "the model streamed no text"
    assert result["answer"] == sent
    # The page showed the answer growing: several intermediate texts, each a prefix of the next.
    seen = [s for s in result["streamed"] if s]
    assert len(seen) >= 2, seen
    assert all(b.startswith(a) for a, b in itertools.pairwise(seen))
    assert "tiny-llm · unregistered (local directory) · recipe tiny-llm" in result["chatStamp"]
    assert result["turns"] == ["turn user", "turn assistant", "turn user", "turn assistant"]
    assert result["tabletOverflow"] <= 0, "horizontal scrolling at tablet width (768 px)"
    assert result["storage"] == {"session": "test-key-admin-0123456789abc", "local": 0}
    assert result["afterNewChat"] == {"turns": 0, "pending": 0}
    assert (out_dir / "chat.png").is_file() and (out_dir / "chat-tablet.png").is_file()


def test_wrong_key_and_missing_scope_are_shown_in_words(page_run):
    result, out_dir = page_run
    assert "Your API key was not accepted (401 unauthorized): invalid API key" in result["wrongKeyAlert"]
    assert result["wrongKeyPanelVisible"] and result["wrongKeyStored"] is None
    assert "Your API key is not allowed to do this (403 forbidden)" in result["forbiddenText"]
    assert "lacks scope 'classify'" in result["forbiddenText"]
    assert (out_dir / "wrong-key.png").is_file() and (out_dir / "forbidden.png").is_file()


def test_image_task_picker_runs_the_chosen_task_and_shows_the_image(page_run):
    """HealthGPT's generation tasks (issue 18): the picker lists each, the request names the one picked,
    and the answer's PNG is drawn in the conversation."""
    result, out_dir = page_run
    assert ["generate", False, True] in result["imageTasks"] and ["ask", False, False] in result["imageTasks"]
    assert result["imageTaskOptions"] == [
        ["generation", "as instructed"],
        ["reconstruction", "reconstruct the image"],
        ["super_resolution", "super-resolve a low-resolution image"],
        ["modality_conversion", "convert fundus photo → angiogram"],
        ["text_to_image", "draw from the description"],
    ]
    assert result["imageTaskPickerVisible"]
    request = result["imageRequest"]
    assert request["model"] == "tiny-healthgpt" and request["eyeops_task"] == "super_resolution"
    assert [p["type"] for p in request["messages"][-1]["content"]] == ["image_url", "text"]
    assert result["imageStatus"] == 200
    assert result["imageApiTask"] == "super_resolution"
    assert result["generated"] == {"prefix": "data:image/png;base64,", "width": 32, "height": 32}
    assert "tiny-healthgpt · unregistered (local directory) · recipe tiny-healthgpt" in result["imageStamp"]
    assert (out_dir / "image-task.png").is_file()
