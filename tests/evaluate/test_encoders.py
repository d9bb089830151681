"""SemScore and BERTScore: the papers' encoders when present, an honestly named stand-in otherwise."""

from __future__ import annotations

import shutil

import pytest

from eyeops.errors import ConfigError
from eyeops.evaluate import encoders
from eyeops.evaluate.text_metrics import EssayMetrics
from eyeops.recipes import EvalSpec

REFS = ["Glaucoma damages the optic nerve.", "Cataract is clouding of the lens."]
PREDS = ["The optic nerve is harmed by glaucoma.", "The weather is sunny today."]


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory):
    """A tiny random MPNet saved as a sentence-transformers model in a folder named like the paper's."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    root = tmp_path_factory.mktemp("encoders")
    hf = root / "hf"
    config = MPNetConfig(
        vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    MPNetModel(config).save_pretrained(hf)
    AutoTokenizer.from_pretrained(str(encoders.packaged_encoder_dir())).save_pretrained(hf)
    st = SentenceTransformer(modules=[models.Transformer(str(hf)), models.Pooling(32, "mean")], device="cpu")
    out = root / "all-mpnet-base-v2"
    st.save(str(out))
    return out


def test_stand_in_is_named_after_its_encoder(tmp_path):
    empty_cache = str(tmp_path / "hf-cache")
    encoder = encoders.resolve_encoder(encoders.SEMSCORE_MODEL, cache_dir=empty_cache)
    assert encoder.substituted and encoder.name == "all-MiniLM-L6-v2"
    assert encoders.metric_name("semscore", encoder) == "semscore_all-MiniLM-L6-v2"
    assert encoders.metric_name("bertscore", encoder) == "bertscore_all-MiniLM-L6-v2"
    # the packaged directory configured explicitly carries the same name (not its folder's, "model")
    packaged = EssayMetrics(semscore_model=str(encoders.packaged_encoder_dir()))
    assert packaged.names()["semscore"] == "semscore_all-MiniLM-L6-v2" and packaged.notes() != []
    assert EvalSpec().semscore_model == encoders.SEMSCORE_MODEL
    assert EvalSpec().bertscore_model == encoders.BERTSCORE_MODEL


def test_paper_encoder_from_a_directory_or_the_hub_cache(tiny_mpnet, tmp_path):
    metrics = EssayMetrics(semscore_model=str(tiny_mpnet), metrics=("semscore",))
    assert metrics.names() == {"semscore": "semscore"} and metrics.notes() == []
    scores = metrics.scores(REFS, REFS)
    assert scores["semscore"] == pytest.approx(1.0, abs=1e-5)
    # the same files in the Hugging Face cache layout resolve from the hub id, offline
    repo = tmp_path / "cache" / "models--sentence-transformers--all-mpnet-base-v2"
    shutil.copytree(tiny_mpnet, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    cached = encoders.resolve_encoder(encoders.SEMSCORE_MODEL, cache_dir=str(tmp_path / "cache"))
    assert not cached.substituted and cached.name == "all-mpnet-base-v2"
    assert cached.path.endswith("abc123") and encoders.metric_name("semscore", cached) == "semscore"


def test_paper_name_needs_the_paper_architecture(tmp_path):
    impostor = tmp_path / "all-mpnet-base-v2"
    shutil.copytree(encoders.packaged_encoder_dir(), impostor)  # a BERT in an mpnet-named folder
    with pytest.raises(ConfigError, match="model_type 'bert', not 'mpnet'"):
        EssayMetrics(semscore_model=str(impostor)).names()
    with pytest.raises(ConfigError, match="does not exist"):
        encoders.resolve_encoder(str(tmp_path / "missing"))


def test_semscore_is_the_unclipped_cosine():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(encoders.packaged_encoder_dir()), device="cpu")
    pairs = [*zip(REFS, PREDS, strict=True), ("Use eye drops twice daily.", "Tax returns are due in April.")]
    refs, preds = [r for r, _ in pairs], [p for _, p in pairs]
    expected = [float(st.similarity(st.encode([r]), st.encode([p]))[0, 0]) for r, p in pairs]
    got = encoders.semscore(refs, preds, str(encoders.packaged_encoder_dir()))
    assert got == pytest.approx(expected, abs=1e-5)
    assert got[0] > 0.7 and got[1] < 0.3
    assert min(got) < 0.0  # a negative cosine is reported as is, not clipped to 0


def test_bertscore_matches_the_bert_score_package_offline():
    from bert_score import score

    path = str(encoders.packaged_encoder_dir())
    ours = encoders.bertscore(REFS, PREDS, path)
    _, _, f1 = score(PREDS, REFS, model_type=path, num_layers=6, device="cpu")
    assert ours == pytest.approx(f1.tolist(), abs=1e-5)
    assert encoders.bertscore(REFS, REFS, path) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert ours[0] > ours[1]  # the paraphrase beats the unrelated sentence
    assert encoders.bertscore([REFS[0], REFS[1]], ["", PREDS[1]], path) == pytest.approx([0.0, ours[1]])
    encoder = encoders.resolve_encoder(path)
    assert encoders.bertscore_layer(encoder) == 6 and encoders.bertscore_layer(encoder, 3) == 3
    with pytest.raises(ConfigError, match="layer 7 is not a layer"):
        encoders.bertscore_layer(encoder, 7)
