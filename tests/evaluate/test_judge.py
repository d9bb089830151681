"""LLM-as-judge against a real HTTP server on the OpenAI chat-completions route."""

from __future__ import annotations

import json

import pytest
from eyeops_testing.judge_server import JudgeServer, verdict

from eyeops.errors import ConfigError, DataError
from eyeops.evaluate import judge
from eyeops.recipes import EvalSpec, JudgeSpec, parse_recipe

KEY_ENV = "EYEOPS_TEST_JUDGE_KEY"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Matches the reference.\nScore: 5", 5),
        ("**Score:** 4", 4),
        ("score is 2 out of 5", 2),
        ("I would say 3/5.", 3),
        ("4", 4),
        ("Score: 3. On reflection, Score: 1", 1),  # the last score given
        ("Score: 9", None),  # off the 1..5 scale
        ("Score: 7/10", None),  # another scale
        ("I cannot grade this.", None),
        ("", None),
    ],
)
def test_parse_score(reply, expected):
    assert judge.parse_score(reply, 5) == expected


def _items():
    return [
        judge.JudgeItem("b", "What is glaucoma?", "Optic nerve damage.", "Optic nerve damage."),
        judge.JudgeItem("a", "What is a cataract?", "A cloudy lens.", "Lens clouding."),  # even length
        judge.JudgeItem("c", "What is AMD?", "Macular degeneration.", "Retina thing."),  # odd length
    ]


def test_judge_scores_counts_unparsed_and_logs_its_setup(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "judge-secret")
    with JudgeServer(api_key="judge-secret") as server:
        spec = JudgeSpec(base_url=server.base_url, model="judge-test", api_key_env=KEY_ENV)
        result = judge.judge_answers(spec, _items(), tmp_path)
    # the server's verdicts: b equal → "Score: 5" (1.0); a → "Score: 3/5" (0.5); c → no score (0)
    assert [verdict(i.reference, i.prediction).split()[-1] for i in _items()] == ["5", "3/5", "answer."]
    assert result.metrics == {
        "judge_score": pytest.approx((0.5 + 1.0 + 0.0) / 3),
        "judge_unparsed_rate": pytest.approx(1 / 3),
        "judge_n": 3.0,
    }
    assert [(r["id"], r["status"], r["raw_score"]) for r in result.rows] == [
        ("a", "ok", 3),
        ("b", "ok", 5),
        ("c", "unparseable", ""),
    ]
    sent = server.requests[0]
    assert sent["model"] == "judge-test" and sent["temperature"] == 0.0
    assert sent["messages"][0] == {"role": "system", "content": judge.DEFAULT_RUBRIC}
    assert "Candidate answer:\nLens clouding." in sent["messages"][1]["content"]
    rubric = (tmp_path / "judge" / "rubric.md").read_text()
    config = json.loads((tmp_path / "judge" / "config.json").read_text())
    assert rubric.strip() == judge.DEFAULT_RUBRIC and result.artifacts["judge_rubric"].endswith("rubric.md")
    assert config["model"] == "judge-test" and config["api_key_env"] == KEY_ENV
    assert "judge-secret" not in json.dumps(config)


def test_custom_rubric_scale_and_max_items(tmp_path):
    with JudgeServer() as server:
        spec = JudgeSpec(
            base_url=server.base_url, model="j", api_key_env=None, rubric="Grade 1-5.", max_items=2
        )
        result = judge.judge_answers(spec, _items(), tmp_path)
    assert len(server.requests) == 2 and [r["id"] for r in result.rows] == ["a", "b"]
    assert server.requests[0]["messages"][0]["content"] == "Grade 1-5."
    assert json.loads((tmp_path / "judge" / "config.json").read_text())["rubric"] == "recipe"


def test_judge_failures_are_precise(tmp_path, monkeypatch):
    items = _items()[:1]
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"{KEY_ENV} is not set"):
        judge.judge_answers(
            JudgeSpec(base_url="http://127.0.0.1:9/v1", model="j", api_key_env=KEY_ENV), items, tmp_path
        )
    monkeypatch.setenv(KEY_ENV, "wrong")
    with JudgeServer(api_key="right") as server:
        spec = JudgeSpec(base_url=server.base_url, model="j", api_key_env=KEY_ENV)
        with pytest.raises(ConfigError, match="HTTP 401 on item 'b'"):
            judge.judge_answers(spec, items, tmp_path)
    with pytest.raises(ConfigError, match="unreachable"):
        judge.judge_answers(
            JudgeSpec(base_url=server.base_url, model="j", api_key_env=None, timeout_s=2), items, tmp_path
        )
    with pytest.raises(DataError, match="no answers"):
        judge.judge_answers(spec, [], tmp_path)


def test_recipe_judge_section():
    assert EvalSpec().judge is None  # off by default
    recipe = parse_recipe(
        {
            "name": "judged",
            "model": {"family": "classifier", "weights": "none"},
            "evaluate": {"judge": {"base_url": "http://judge:8000/v1", "model": "qwen2.5-72b-instruct"}},
            "register": {"model_name": "judged"},
        }
    )
    assert recipe.evaluate.judge.api_key_env == "OPENAI_API_KEY" and recipe.evaluate.judge.max_score == 5
    with pytest.raises(Exception, match=r"evaluate\.judge\.temperature"):
        parse_recipe(
            {
                "name": "judged",
                "model": {"family": "classifier", "weights": "none"},
                "evaluate": {"judge": {"base_url": "http://j/v1", "model": "m", "temperature": 1}},
                "register": {"model_name": "judged"},
            }
        )
