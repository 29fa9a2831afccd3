"""A VLM as the target: its language model gets target + w * (tuned - base), names mapped from an LLM checkpoint;
the vision tower and projector stay the target's, byte for byte; the whole VLM is saved with its processor."""
import logging

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration, \
    Qwen2VLForConditionalGeneration

from task_vector_opt.errors import UsageError
from task_vector_opt.merging.grouping import group_names, ordered_groups
from task_vector_opt.merging.merger import Merger
from task_vector_opt.merging.models import WeightFiles, load_model, save_model
from task_vector_opt.merging.task_vector import build_task_vector
from task_vector_opt.merging.vlm import check_local_vlm_target, checkpoint_name
from tiny_models import make_model, make_trio, save
from vlm_models import make_llava, make_qwen2_vl

VLM_MAKERS = {"llama": make_llava, "qwen2": make_qwen2_vl}


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def vlm_trio(request, tmp_path_factory):
    """base / tuned: tiny LLMs (vocabulary 256); target: a tiny VLM whose language model has their shape and
    extra image tokens in its vocabulary."""
    root = tmp_path_factory.mktemp(f"vlm_{request.param}")
    trio = make_trio(root, request.param)
    return {**trio, "arch": request.param, "target": VLM_MAKERS[request.param](root / "vlm")}


def _load(directory):
    return load_model(directory, "float32", "cpu", trust_remote_code=False, allow_pickle=False)


def _language_and_other(model):
    named = dict(model.named_parameters())
    language = {n: p for n, p in named.items() if checkpoint_name(n) is not None}
    return language, {n: p for n, p in named.items() if n not in language}


def test_every_language_tensor_maps_to_a_tensor_of_the_llm_checkpoint_and_nothing_else_does(vlm_trio):
    model, _ = _load(vlm_trio["target"])
    base = WeightFiles(vlm_trio["base"])
    language, other = _language_and_other(model)
    assert {checkpoint_name(n) for n in language} == set(base.keys())
    assert other and all(n.startswith(("model.vision_tower.", "model.multi_modal_projector.", "model.visual."))
                         for n in other)


def test_merged_language_tensors_equal_target_plus_w_tau_and_vision_tensors_are_untouched(vlm_trio, caplog):
    model, _ = _load(vlm_trio["target"])
    language, other = _language_and_other(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with caplog.at_level(logging.INFO, logger="task_vector_opt.merging.vlm"):
        vector = build_task_vector(model, vlm_trio["base"], vlm_trio["tuned"], dtype=torch.float32,
                                   store_device="cpu")
    assert set(vector) == set(language)
    assert f"{len(other)} tensor(s) left exactly as the target's" in caplog.text
    merger = Merger(model, vector, group_names(list(vector), "all"), "cpu")
    merger.apply({group: 0.7 for group in ordered_groups(merger.groups)})

    base, tuned = WeightFiles(vlm_trio["base"]), WeightFiles(vlm_trio["tuned"])
    for name, param in language.items():
        key = checkpoint_name(name)
        tau = tuned.get(key) - base.get(key)
        expected = before[name].clone()
        rows = tau.shape[0]
        expected[:rows] = torch.add(before[name][:rows], tau, alpha=0.7)
        assert torch.equal(param, expected), name
    embed = model.get_input_embeddings().weight
    assert embed.shape[0] > 256 and torch.equal(embed[256:], before["model.language_model.embed_tokens.weight"][256:])
    for name, param in other.items():
        assert torch.equal(param, before[name]), name


def test_layer_mode_counts_only_the_language_models_layers_and_tensors(vlm_trio):
    model, _ = _load(vlm_trio["target"])
    vector = build_task_vector(model, vlm_trio["base"], vlm_trio["tuned"], dtype=torch.float32, store_device="cpu")
    assert ordered_groups(group_names(list(vector), "layer")) == ["embed_tokens", "layer_00", "layer_01", "norm",
                                                                  "lm_head"]


def test_the_saved_vlm_loads_with_its_own_and_the_auto_class_with_the_scored_weights(vlm_trio, tmp_path):
    model, tokenizer = _load(vlm_trio["target"])
    assert type(model) in (LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration)
    vector = build_task_vector(model, vlm_trio["base"], vlm_trio["tuned"], dtype=torch.float32, store_device="cpu")
    merger = Merger(model, vector, group_names(list(vector), "layer"), "cpu")
    merger.apply({group: 1.3 for group in ordered_groups(merger.groups)})
    # no torchvision in .venv for Qwen2-VL's processor: the model only (tests/test_vlm_qwen2_vl.py, marked vision,
    # saves it whole with its processor in .venv-vision)
    if vlm_trio["arch"] == "qwen2":
        model.save_pretrained(tmp_path / "out")
    else:
        save_model(model, tokenizer, tmp_path / "out", overwrite=False, extra_files={"note.txt": "x"})
        processor = AutoProcessor.from_pretrained(tmp_path / "out")
        assert processor.image_processor is not None and processor.chat_template
    for loader in (type(model), AutoModelForImageTextToText):
        saved = loader.from_pretrained(tmp_path / "out", dtype=torch.float32)
        assert type(saved) is type(model)
        live = dict(model.named_parameters())
        for name, param in saved.named_parameters():
            assert torch.equal(param, live[name]), name


def test_a_vlm_whose_language_model_is_another_architecture_is_refused_before_loading(vlm_trio, tmp_path):
    other_arch = "mistral" if vlm_trio["arch"] == "qwen2" else "qwen2"
    wrong = save(make_model(other_arch), None, tmp_path / "wrong_arch")
    with pytest.raises(UsageError, match=r"--target_model: the language model of .* --base_model is a"):
        check_local_vlm_target(str(vlm_trio["target"]), str(wrong))
    wider = save(make_model(vlm_trio["arch"], hidden=64), None, tmp_path / "wider")
    with pytest.raises(UsageError, match="hidden_size=32 but --base_model has 64"):
        check_local_vlm_target(str(vlm_trio["target"]), str(wider))
    assert check_local_vlm_target(str(vlm_trio["target"]), str(vlm_trio["base"])) is not None
    assert check_local_vlm_target(str(vlm_trio["base"]), str(vlm_trio["base"])) is None  # an LLM target


def test_no_mergekit_config_is_offered_for_a_vlm_target(vlm_trio):
    from task_vector_opt.outputs.mergekit_export import layout_from_merger, reasons_not_expressible

    model, _ = _load(vlm_trio["target"])
    vector = build_task_vector(model, vlm_trio["base"], vlm_trio["tuned"], dtype=torch.float32, store_device="cpu")
    layout = layout_from_merger(model, Merger(model, vector, group_names(list(vector), "layer"), "cpu"))
    assert any("vision-language model" in reason for reason in reasons_not_expressible(layout))
