"""Scraped dialogues import de-identified; several sources mix with weights, split by patient."""

from __future__ import annotations

import pytest
from eyeops_testing.raw_data import PLANTED, write_odir, write_raw_dialogues

from eyeops.data import load_samples, prepare, read_manifest
from eyeops.data.deid_text import mask
from eyeops.data.importers import raw_dialogue
from eyeops.data.schema import Task
from eyeops.errors import RecipeError
from eyeops.recipes import DataSpec, parse_recipe


def _text(record) -> str:
    return "\n".join([*(m.content for m in record.messages), record.answer or "", *record.meta.values()])


def test_raw_dialogues_import_with_identifiers_masked(tmp_path):
    result = raw_dialogue.load(str(write_raw_dialogues(tmp_path / "dump.txt")))
    assert [r.key for r in result.records] == ["1", "3"]
    first, english = result.records
    assert first.task == Task.DIALOGUE and [m.role for m in first.messages] == ["user", "assistant", "user"]
    assert first.messages[0].content.startswith(
        "疾病：白内障\n病情描述：我叫[NAME]，左眼视力下降半年，在[HOSPITAL]查过"
    )
    assert first.messages[2].content == "谢谢[NAME]医生" and first.answer == "不客气，资料见 [URL] 。"
    assert "建议去医院复查" in first.messages[1].content  # "go to hospital" is not a hospital's name
    assert english.task == Task.TEXT_QA and english.messages[0].content.endswith(
        "[NAME] told me it may be macular degeneration. Is that right?"
    )
    assert english.answer.endswith(
        "Write to [EMAIL] for the results."
    )  # the unanswered "Thank you." is dropped
    for record in result.records:
        assert not any(planted in _text(record) for planted in PLANTED)
    assert dict(result.masked) == {"name": 4, "hospital": 1, "phone": 1, "url": 1, "email": 1}
    assert [(q.path, q.reason) for q in result.quarantine] == [
        ("dump.txt id=2", "no doctor reply"),
        ("dump.txt id=4", "no 'Dialogue' section"),
    ]
    assert "3 page URL(s) dropped" in result.notes["deid"]
    assert mask("电话 010-62345678，+44 20 7253 3411，身份证110101199003071234")[1] == {"phone": 2, "id": 1}


def test_weighted_mix_of_odir_and_dialogues_splits_by_patient(tmp_path):
    spec = DataSpec(
        source="mix",
        image_size=64,
        tasks=[Task.CLASSIFY],
        val_fraction=0.2,
        test_fraction=0.2,
        mix=[
            {"source": "odir", "path": str(write_odir(tmp_path / "odir")), "weight": 3},
            {"source": "raw_dialogue", "path": str(write_raw_dialogues(tmp_path / "d.txt")), "weight": 1},
        ],
    )
    ref = prepare(spec, str(tmp_path / "out"), name="mixed")
    manifest = read_manifest(ref.uri)
    odir, dialogue = manifest.mix
    # 8 eyes and 2 usable dialogues at 3:1 → as many as the dialogues allow: 6 eyes + 2 dialogues
    assert (odir["available"], odir["taken"], dialogue["available"], dialogue["taken"]) == (8, 6, 2, 2)
    assert sum(odir["samples"].values()) == 6 and sum(dialogue["samples"].values()) == 2
    assert dialogue["rejected"] == 2 and manifest.masked["name"] == 4
    samples = load_samples(ref.uri)
    assert {s.source for s in samples} == {"odir", "raw_dialogue"} and manifest.patient_split_ok
    splits_per_patient = {}
    for s in samples:
        if s.patient_id:
            splits_per_patient.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in splits_per_patient.values())
    assert manifest.spec["mix"][0]["weight"] == 3 and "path" not in manifest.spec["mix"][0]
    quality = (tmp_path / "out" / "quality.json").read_text()
    assert (
        '"raw_dialogue": 2' in quality
        and "identifiers masked" in (tmp_path / "out" / "quality.html").read_text()
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": "mix"}, "data.mix lists the sources"),
        (
            {"source": "mix", "mix": [{"source": "knowledge", "weight": 1}, {"source": "synthetic"}]},
            "every entry a weight",
        ),
        ({"source": "mix", "mix": [{"source": "odir"}]}, "path is required for source 'odir'"),
        ({"source": "mix", "mix": [{"source": "mix"}]}, "cannot be source 'mix'"),
    ],
)
def test_mix_recipe_errors_name_the_problem(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe({"name": "x", "data": data, "model": {"family": "llm"}, "register": {"model_name": "x"}})


def test_one_data_source_replaces_a_recipes_mix():
    from eyeops.pipeline.steps import resolve_recipe
    from eyeops.recipes import load_recipe

    assert [e.source for e in load_recipe("ophglm").data.mix] == ["synthetic", "knowledge"]
    recipe = resolve_recipe("ophglm", "{}", "synthetic:12")  # eyeops pipeline run ophglm -d synthetic:12
    assert (recipe.data.source, recipe.data.n, recipe.data.mix) == ("synthetic", 12, [])
