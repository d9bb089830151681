"""Every family's inference moves every input to the model's device: the model is placed on the
``meta`` device (no GPU here) and hooks at the first modules that read inputs assert each tensor
arrived there — pixels, ids, masks, BERT ids — for classify, generate and stream alike. A tensor left
on the CPU fails the hook (on a GPU it would fail the forward)."""

from __future__ import annotations

import pytest
import torch
from eyeops_testing.vlm_tiny import save_tiny_llm, tiny_healthgpt_recipe, tiny_recipe
from PIL import Image

from eyeops.data.schema import Message
from eyeops.inference import GenerationRequest
from eyeops.recipes import parse_recipe

META = torch.device("meta")
ENCODER = {"backbone": "efficientnet_lite0", "weights": "none", "image_size": 32, "circular_crop": False}
IMAGE = Image.new("RGB", (48, 40), (180, 60, 30))
ASK = GenerationRequest(
    messages=[Message(role="user", content="<image>\nIs there glaucoma?")], images=[IMAGE], max_new_tokens=2
)


class Reached(Exception):
    """The probed module was reached with every input on the model's device."""


def _tensors(args, kwargs):
    values = [*args, *kwargs.values()]
    return [v for v in values if torch.is_tensor(v)]


def probe(*modules):
    """Pre-hooks: every tensor entering ``modules`` must be on meta; then stop the call there."""

    def hook(module, args, kwargs):
        tensors = _tensors(args, kwargs)
        assert tensors and all(t.device == META for t in tensors), [t.device for t in tensors]
        raise Reached(type(module).__name__)

    return [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]


def probe_generate(predictor):
    """transformers' ``generate`` reads token values before its first forward, which meta tensors
    cannot give: its call boundary is probed instead (what every family's decode passes it)."""

    def generate(**kwargs):
        tensors = _tensors((), kwargs)
        assert tensors and all(t.device == META for t in tensors), {k: v.device for k, v in kwargs.items()}
        raise Reached("generate")

    predictor.lm.generate = generate


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


def test_classifier_classify():
    from eyeops.models.classifier.family import FAMILY
    from eyeops.models.classifier.inference import ClassifierPredictor

    model = {"family": "classifier", **ENCODER, "labels": ["normal", "glaucoma"]}
    recipe = parse_recipe({"name": "tiny-fc", "model": model, "register": {"model_name": "tiny-fc"}})
    predictor = ClassifierPredictor(FAMILY.build_model(recipe), recipe.model, 0.5, META)
    assert next(predictor.model.parameters()).device == META
    probe(predictor.model.net.conv_stem)  # the first module reading pixels (classify runs model.embed)
    with pytest.raises(Reached):
        predictor.classify([IMAGE])


def test_llm_generate_and_stream(llm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eyeops.models.llm.inference import ChatModel

    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir).to(META)
    chat = ChatModel(model, tokenizer)
    assert chat.device == META
    probe_generate(chat)
    text = GenerationRequest(messages=[Message(role="user", content="hi")], max_new_tokens=2)
    with pytest.raises(Reached):
        chat.generate([text])
    with pytest.raises(Reached):  # the stream's decode thread raises in the consumer
        list(chat.stream(text))


def test_vlm_generate_and_stream(llm_dir):
    from eyeops.models.vlm.family import FAMILY
    from eyeops.models.vlm.inference import VLMPredictor
    from eyeops.models.vlm.modeling import _tokenizer

    recipe = parse_recipe(tiny_recipe(llm_dir))
    predictor = VLMPredictor(recipe, FAMILY.build_model(recipe), _tokenizer(recipe.model), META)
    probe(predictor.model.tower)
    with pytest.raises(Reached):
        predictor.generate([ASK])
    with pytest.raises(Reached):
        predictor.stream(ASK)


def test_healthgpt_generate_and_stream(llm_dir):
    from eyeops.models.healthgpt.inference import HealthGPTPredictor
    from eyeops.models.healthgpt.modeling import TASKS, _tokenizer, build_healthgpt

    recipe = parse_recipe(tiny_healthgpt_recipe(llm_dir))
    tokenizer = _tokenizer(recipe.model)  # with the image tokens the model was built for
    predictor = HealthGPTPredictor(recipe, build_healthgpt(recipe, tokenizer), tokenizer, META)
    assert predictor.model.vq.quantize.embedding.weight.device == META  # the VQ moved with it
    probe(predictor.model.tower)
    for task in TASKS:
        with pytest.raises(Reached):
            predictor.generate([ASK.model_copy(update={"task": task})])
    with pytest.raises(Reached):
        predictor.stream(ASK)


def test_ophglm_classify_generate_and_stream(llm_dir):
    from eyeops.models.ophglm.family import FAMILY
    from eyeops.models.ophglm.inference import OphGLMPredictor

    encoder = ENCODER
    recipe = parse_recipe(
        {
            "name": "tiny-ophglm",
            "model": {
                "family": "ophglm",
                "llm": str(llm_dir),
                "image_encoder": encoder,
                "prefix_tokens": 2,
                "fusion_hidden": 16,
            },
            "evaluate": {"primary_metric": "closed_qa/accuracy"},
            "register": {"model_name": "tiny-ophglm"},
        }
    )
    predictor = OphGLMPredictor(recipe, FAMILY.build_model(recipe), META)
    hooks = probe(predictor.model.classifier)
    with pytest.raises(Reached):
        predictor.classify([IMAGE])
    for hook in hooks:
        hook.remove()
    # The fused prefix picks rows by value (nonzero) before the encoders run, which meta tensors
    # cannot do: the prompt ids are probed where the prefix embedding starts.
    probe(predictor.lm.get_input_embeddings())
    with pytest.raises(Reached):
        predictor.generate([ASK])
    with pytest.raises(Reached):
        predictor.stream(ASK)
