"""The LLM-assisted data engine against a real eye-llm served by ``eyeops serve`` on loopback.

The served model is the LLM family's own (a tiny Llama + BPE tokenizer built here, saved by
``FAMILY.save``), taught the engine's exact prompts for two ODIR eyes — a glaucomatous right eye and
a normal left eye — so its replies are known: one JSON list of four items for both eyes, and a
verdict per verification prompt. The engine then has to sort them: a leaked answer and a yes/no
answer that contradicts the labels fail the deterministic checks; the verifier contradicts the
normal eye's disc finding and finds its glaucoma report unsupported; three items survive.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from eyeops_testing.fundus import write_fundus
from eyeops_testing.llm_tiny import save_tiny_llm, teach_answers, tiny_recipe
from eyeops_testing.serving import CHAT_KEY, free_port_server, server_env

from eyeops.data import load_samples, prepare, read_manifest
from eyeops.data.importers import odir
from eyeops.data.llm_engine import (
    REPORT_QUESTION,
    VERIFY_SYSTEM,
    generation_prompt,
    image_source,
    verification_prompt,
)
from eyeops.data.schema import ODIR_LABELS, Task
from eyeops.errors import ConfigError
from eyeops.recipes import DataSpec

pytestmark = pytest.mark.integration
TASKS = [Task.CLOSED_QA, Task.OPEN_QA, Task.REPORT]
YES_NO = ("Does this fundus photograph show signs of glaucoma?", "Yes")
DISC = ("What does the optic disc show?", "An enlarged cup.")
LEAK = ("Is glaucoma present here?", "Glaucoma present")
REPORT = (
    "Examination Type: Fundus photo\nImage Description: Enlarged cup.\nDiagnostic Recommendation: Glaucoma."
)
REPLY = json.dumps(
    {
        "items": [
            {"task": "closed_qa", "question": YES_NO[0], "options": ["Yes", "No"], "answer": YES_NO[1]},
            {"task": "open_qa", "question": DISC[0], "answer": DISC[1]},
            {"task": "open_qa", "question": LEAK[0], "answer": LEAK[1]},
            {"task": "report", "answer": REPORT},
        ]
    }
)


def _odir_csv(root: Path) -> Path:
    row = ("PT-1", 64, "Male", "PT-1_left.jpg", "PT-1_right.jpg", "normal fundus", "glaucoma")
    frame = pd.DataFrame([(*row, 0, 0, 1, 0, 0, 0, 0, 0)], columns=list(odir.COLUMNS))
    write_fundus(root / "PT-1_left.jpg", seed=1)
    write_fundus(root / "PT-1_right.jpg", ["G"], seed=2)
    frame.to_csv(root / "data.csv", index=False)
    return root / "data.csv"


def _taught_pairs(csv: Path) -> list[tuple[list[dict], str]]:
    """The engine's own prompts for both eyes, each with the reply the model must give."""
    glaucoma, normal = (image_source(r, ODIR_LABELS) for r in odir.load(str(csv)).records)  # OD, OS
    verdicts = [
        (glaucoma, YES_NO, "SUPPORTED"),
        (glaucoma, DISC, "SUPPORTED"),
        (glaucoma, (REPORT_QUESTION, REPORT), "SUPPORTED"),
        (normal, DISC, "CONTRADICTED"),
        (normal, (REPORT_QUESTION, REPORT), "UNSUPPORTED"),
    ]
    prompts = [(generation_prompt(src, TASKS, 4), REPLY) for src in (glaucoma, normal)]
    prompts += [(verification_prompt(src, q, a), verdict) for src, (q, a), verdict in verdicts]
    return [
        ([{"role": "system", "content": system}, {"role": "user", "content": user}], reply)
        for (system, user), reply in prompts
    ]


@pytest.fixture(scope="module")
def odir_csv(tmp_path_factory) -> Path:
    return _odir_csv(tmp_path_factory.mktemp("odir"))


@pytest.fixture(scope="module")
def llm_server(odir_csv, tmp_path_factory):
    import torch

    from eyeops.families import get_family
    from eyeops.models.common.hub import load_tokenizer
    from eyeops.recipes import parse_recipe

    pairs = _taught_pairs(odir_csv)
    corpus = [m["content"] for messages, _ in pairs for m in messages] + [reply for _, reply in pairs]
    base = save_tiny_llm(
        tmp_path_factory.mktemp("base"), hidden=64, corpus=corpus, vocab_size=1500, max_positions=1024
    )
    recipe = parse_recipe(
        tiny_recipe(base, max_seq_len=1024, stages=[{"name": "sft", "trainable": ["all"], "max_steps": 1}])
    )
    family = get_family("llm")
    model = family.build_model(recipe)
    family.apply_stage(model, recipe.train.stages[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: several times faster on a busy 2-core machine, and repeatable
    try:
        teach_answers(model, load_tokenizer(str(base)), pairs, steps=300, exact_for=10, min_prob=0.9)
    finally:
        torch.set_num_threads(threads)
    model_dir = tmp_path_factory.mktemp("eye-llm")
    family.save(model, recipe, model_dir)
    # decoded with one thread like the teaching above: the long JSON reply must come back token for token
    env = server_env(tmp_path_factory.mktemp("serve-root"), OMP_NUM_THREADS="1")
    server = free_port_server(
        ["serve", "--backend", "local", "--model", str(model_dir)], env, tmp_path_factory, "llm"
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _spec(csv: Path, url: str, cache: Path, **engine) -> DataSpec:
    endpoint = {"base_url": f"{url}/v1", "model": "tiny-llm", "max_concurrency": 1, "max_new_tokens": 200}
    return DataSpec(
        source="odir",
        path=str(csv),
        image_size=64,
        tasks=TASKS,
        engine={"kind": "llm", "llm": endpoint, "items_per_record": 4, "cache_dir": str(cache), **engine},
    )


def test_generate_verify_reject_then_rerun_from_cache(llm_server, odir_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("EYEOPS_LLM_API_KEY", CHAT_KEY)
    monkeypatch.setenv("EYEOPS_DEID_SALT", "test-salt")  # byte-identical reruns
    spec = _spec(odir_csv, llm_server.url, tmp_path / "cache")
    first = prepare(spec, str(tmp_path / "first"), name="llm-qa")
    generation = read_manifest(first.uri).generation
    assert generation["model"] == "tiny-llm" and generation["prompts"]["verify_system"] == VERIFY_SYSTEM
    assert generation["counts"] == {
        "sources": 2,
        "generated": 8,
        "verified": 3,
        "rejected": 5,
        "failed_sources": 0,
        "fallback_sources": 0,
    }
    assert generation["rejected_by_reason"] == {
        "answer leaked into question": 2,
        "contradicts labels": 1,
        "verifier CONTRADICTED": 1,
        "verifier UNSUPPORTED": 1,
    }
    assert generation["calls"] == {"calls": 7, "cache_hits": 0, "failed": 0, "over_budget": 0}
    assert generation["tokens"]["completion_tokens"] > 0
    assert sorted(v["verdict"] for v in generation["verdicts"]) == ["REJECTED"] * 5 + ["SUPPORTED"] * 3

    samples = load_samples(first.uri)
    assert sorted(s.task for s in samples) == sorted(TASKS)  # the glaucomatous eye's three items
    assert all(s.meta["engine"] == "llm" and s.meta["verdict"] == "SUPPORTED" for s in samples)
    closed = next(s for s in samples if s.task == Task.CLOSED_QA)
    assert (closed.answer, closed.options) == ("Yes", ["Yes", "No"])
    assert closed.messages[0].content.startswith("<image>\n" + YES_NO[0])
    manifest = read_manifest(first.uri)
    assert sum(q.reason.startswith("llm ") for q in manifest.quarantine) == 5
    quality = json.loads((Path(first.uri) / "quality.json").read_text())
    assert quality["rejected_by_reason"]["llm verifier CONTRADICTED"] == 1
    assert quality["generation"]["counts"]["verified"] == 3
    assert "LLM engine (tiny-llm)" in (Path(first.uri) / "quality.html").read_text()

    rerun = prepare(spec, str(tmp_path / "rerun"), name="llm-qa")
    again = read_manifest(rerun.uri).generation
    assert again["calls"] == {"calls": 0, "cache_hits": 7, "failed": 0, "over_budget": 0}
    assert again["counts"] == generation["counts"] and rerun.fingerprint == first.fingerprint


def test_budget_falls_back_to_templates_and_a_bad_key_fails_fast(llm_server, odir_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("EYEOPS_LLM_API_KEY", CHAT_KEY)
    spec = _spec(odir_csv, llm_server.url, tmp_path / "fresh-cache", max_calls=1)
    ref = prepare(spec, str(tmp_path / "budget"), name="llm-budget")
    generation = read_manifest(ref.uri).generation
    assert generation["calls"]["calls"] == 1 and generation["calls"]["over_budget"] == 4
    assert generation["counts"]["fallback_sources"] == 1 and generation["counts"]["verified"] == 0
    assert generation["rejected_by_reason"]["not verified"] == 3  # no budget left to check them
    samples = load_samples(ref.uri)
    assert samples and all("engine" not in s.meta for s in samples)  # the normal eye's template items
    assert {s.eye for s in samples} == {"OS"}

    monkeypatch.setenv("EYEOPS_LLM_API_KEY", "not-a-key-0123456789")
    with pytest.raises(ConfigError, match=r"refused the key from \$EYEOPS_LLM_API_KEY \(401\)"):
        prepare(_spec(odir_csv, llm_server.url, tmp_path / "other"), str(tmp_path / "bad"), name="x")
