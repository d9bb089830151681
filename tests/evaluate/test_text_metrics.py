"""Text metrics: MCQ letter parsing and id matching, essay metrics against hand-computed values."""

from __future__ import annotations

import pytest

from eyeops.errors import DataError
from eyeops.evaluate import text_metrics as tm

OPTIONS = ["Glaucoma", "Cataract", "Retinal detachment", "Angle-closure glaucoma"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: B", "B"),
        ("The answer is (C).", "C"),
        ("answer: d.", "D"),
        ("B) Cataract, because the lens is cloudy", "B"),
        ("C. Retinal detachment", "C"),
        ("I think (b) fits best", "B"),
        ("b) cataract", "B"),
        ("**A**", "A"),
        ("d", "D"),
        ("It is a cataract.", "B"),  # option text
        ("This is angle-closure glaucoma", "D"),  # the longer option wins over "Glaucoma"
        ("Answer: a retinal detachment", "C"),  # lowercase article 'a' is not option A
        ("I am not sure.", None),  # unparseable
        ("Either glaucoma or a cataract", None),  # two options named: ambiguous
        ("Answer: E", None),  # no option E among four
        ("Answer: B.", "B"),
        ("(b)", "B"),
        ("B) Glaucoma", "B"),  # the letter said wins over the option text
        ("glaucoma", "A"),  # the option text alone
    ],
)
def test_parse_choice(text, expected):
    assert tm.parse_choice(text, OPTIONS) == expected


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("Yes, there is no cupping.", ["yes", "no"], "A"),  # the first yes/no said, not "ambiguous"
        ("no.", ["Yes", "No"], "B"),
        ("Maybe, the evidence is weak", ["yes", "no", "maybe"], "C"),
        ("(B)", ["yes", "no", "maybe"], "B"),
        ("It depends.", ["yes", "no"], None),
    ],
)
def test_parse_choice_yes_no_options(text, options, expected):
    assert tm.parse_choice(text, options) == expected


@pytest.mark.parametrize(
    ("gold", "prediction", "status"),
    [
        # VQA-RAD / SLAKE closed answers without options: normalised match on the first clause
        ("left", "Left.", "ok"),
        ("left", "Answer: left, in the frontal lobe", "ok"),
        ("left", "The lesion is on the left side", "ok"),
        ("left", "Right, not left", "wrong"),
        ("CT", "CT scan", "ok"),
        ("CT", "MRI", "wrong"),
        ("2", "two", "ok"),
        ("2", "There are 3 lesions", "wrong"),
        ("left", "...", "unparseable"),
        ("left", None, "missing"),
        # yes/no without options: the first yes/no said
        ("Yes", "Yes, there is cupping", "ok"),
        ("yes", "no.", "wrong"),
        ("no", "I am not sure", "unparseable"),
    ],
)
def test_closed_answers_without_options(gold, prediction, status):
    row = tm.closed_judgement("q1", gold, prediction)
    assert row["status"] == status and row["correct"] == int(status == "ok")


def test_closed_answers_with_options_are_letters():
    assert tm.closed_judgement("q", "Cataract", "b) cataract", OPTIONS)["status"] == "ok"
    assert tm.closed_judgement("q", "B", "I am not sure", OPTIONS)["status"] == "unparseable"
    with pytest.raises(DataError, match=r"field 'answer of id q'.*is empty"):
        tm.closed_judgement("q", "  ", "left")
    rows = [tm.closed_judgement(str(i), "left", p) for i, p in enumerate(["left", "?", "right", "left"])]
    summary = tm.closed_summary(rows)
    assert summary["accuracy"] == 0.5 and summary["unparseable"] == 1 and summary["unparsed_rate"] == 0.25


def test_mcq_matches_by_id_counts_unparseable_and_missing():
    gold = {"q1": "A", "q2": "B", "q3": "Retinal detachment", "q4": "D"}
    options = dict.fromkeys(gold, OPTIONS)
    # Given in another order than gold: matching must use ids, not positions.
    predictions = {"q3": "Answer: C", "q2": "no idea", "q1": "Answer: A"}
    scores = tm.mcq_accuracy(gold, predictions, options)
    assert scores["accuracy"] == pytest.approx(2 / 4)
    assert (scores["n"], scores["correct"], scores["unparseable"], scores["missing"]) == (4, 2, 1, 1)
    assert scores["unparsed_rate"] == pytest.approx(1 / 4)
    rows = {r["id"]: r for r in tm.mcq_judgements(gold, predictions, options)}
    assert rows["q2"]["status"] == "unparseable" and rows["q4"]["status"] == "missing"
    assert rows["q3"]["gold"] == "C" and rows["q3"]["correct"] == 1


def test_mcq_groups_and_errors():
    gold, preds = {"a": "A", "b": "B", "c": "C"}, {"a": "A", "b": "A", "c": "C"}
    scores = tm.mcq_accuracy(gold, preds, groups={"a": "x", "b": "x", "c": "y"})
    assert (
        scores["x/accuracy"] == 0.5
        and scores["y/accuracy"] == 1.0
        and scores["accuracy"] == pytest.approx(2 / 3)
    )
    with pytest.raises(DataError, match="no gold answer"):
        tm.mcq_accuracy(gold, {**preds, "zz": "A"})
    with pytest.raises(DataError, match="neither a letter"):
        tm.mcq_accuracy({"a": "maybe"}, {"a": "A"}, {"a": OPTIONS})
    with pytest.raises(DataError, match="no MCQ items"):
        tm.mcq_accuracy({}, {})


def test_rouge_l_by_hand():
    # LCS("the optic nerve is damaged", "the nerve is damaged") = 4 tokens: P = 4/4, R = 4/5.
    (score,) = tm.rouge_l(["The optic nerve is damaged."], ["the nerve is damaged"])
    assert score == pytest.approx(2 * 1.0 * 0.8 / 1.8)
    assert tm.rouge_l(["青光眼损伤视神经"], ["青光眼损伤视神经"]) == [1.0]  # CJK is not dropped


def test_essay_scores_identical_vs_unrelated():
    refs = ["Cataract is clouding of the lens that blurs vision.", "Glaucoma damages the optic nerve."]
    names = tm.EssayMetrics().names()  # SemScore / BERTScore carry the encoder used when not the paper's
    same = tm.essay_scores(refs, list(refs))
    assert same["rougeL"] == pytest.approx(1.0) and same["bleu"] == pytest.approx(1.0)
    assert same["meteor"] > 0.95 and same[names["semscore"]] > 0.99 and same["n"] == 2
    assert same[names["bertscore"]] == pytest.approx(1.0, abs=1e-5)
    other = tm.essay_scores(refs, ["The weather is sunny today.", "Stock prices fell sharply."])
    for metric in ("rougeL", "bleu", "meteor", "semscore"):
        assert other[names[metric]] < 0.35, metric
    assert other[names["bertscore"]] < same[names["bertscore"]] - 0.2
    items = tm.EssayMetrics().item_scores(refs, list(refs))
    assert tm.EssayMetrics().scores(refs, list(refs), items=items) == pytest.approx(same)


def test_essay_groups_and_bleu_is_corpus_level():
    refs = ["the macula is damaged", "the lens is cloudy", "the retina is detached"]
    preds = ["the macula is damaged", "a cloudy lens", "the retina is detached"]
    scores = tm.essay_scores(refs, preds, groups=["amd", "cataract", "amd"], metrics=("rougeL", "bleu"))
    assert scores["amd/rougeL"] == pytest.approx(1.0) and scores["amd/n"] == 2
    assert scores["cataract/rougeL"] < 1.0
    import sacrebleu

    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score / 100)


def test_meteor_synonyms_with_wordnet():
    if not (tm.WORDNET_DIR / "data.noun").is_file():
        pytest.skip("Debian wordnet-base not installed: METEOR runs without synonyms")
    assert tm.meteor_uses_wordnet()
    # "auto" is a WordNet synonym of "car"; "bike" is not. (NLTK matches synonyms on words left
    # after stemming, so the pair uses words Porter leaves unchanged.)
    synonym = tm.meteor(["the car is red"], ["the auto is red"])[0]
    other = tm.meteor(["the car is red"], ["the bike is red"])[0]
    assert synonym > 0.95 and other < 0.7


def test_bad_inputs_are_data_errors():
    with pytest.raises(DataError, match="2 references but 1 predictions"):
        tm.essay_scores(["a", "b"], ["a"])
    with pytest.raises(DataError, match="not one string"):
        tm.rouge_l("abc", "abc")
    with pytest.raises(DataError, match="unknown essay metric"):
        tm.essay_scores(["a"], ["a"], metrics=("cider",))
    with pytest.raises(DataError, match="no essay items"):
        tm.essay_scores([], [])
