import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig

from task_vector_opt.merging.grouping import group_names, locate, ordered_groups
from tiny_models import make_model


def mistral_7b_names():
    with torch.device("meta"):  # the real Mistral-7B config, no weights allocated
        model = AutoModelForCausalLM.from_config(MistralConfig())
    return [name for name, _ in model.named_parameters()]


@pytest.mark.parametrize("mode,expected", [("all", 291), ("layer", 35), ("parameter", 12)])
def test_mistral_7b_config_gives_the_original_number_of_weights(mode, expected):
    assert len(ordered_groups(group_names(mistral_7b_names(), mode))) == expected


def test_optuna_parameter_names_are_readable():
    names = mistral_7b_names()
    assert ordered_groups(group_names(names, "layer"))[:3] == ["embed_tokens", "layer_00", "layer_01"]
    assert ordered_groups(group_names(names, "layer"))[-2:] == ["norm", "lm_head"]
    parameter = ordered_groups(group_names(names, "parameter"))
    assert {"self_attn.q_proj", "mlp.down_proj", "input_layernorm", "embed_tokens", "norm", "lm_head"} <= set(parameter)
    assert group_names(names, "all")["model.layers.7.mlp.down_proj.weight"] == "layer_07.mlp.down_proj"


def names_of(model):
    return [name for name, _ in model.named_parameters()]


def test_llama_granularity():
    names = names_of(make_model("llama", layers=3))
    assert len(ordered_groups(group_names(names, "all"))) == 3 * 9 + 3
    assert ordered_groups(group_names(names, "layer")) == ["embed_tokens", "layer_00", "layer_01", "layer_02", "norm",
                                                           "lm_head"]
    assert len(ordered_groups(group_names(names, "parameter"))) == 12


def test_qwen2_biases_get_their_own_weight_in_all_mode_and_share_their_module_in_parameter_mode():
    names = names_of(make_model("qwen2", layers=2))
    all_groups = ordered_groups(group_names(names, "all"))
    assert "layer_00.self_attn.q_proj.bias" in all_groups and "layer_00.self_attn.q_proj" in all_groups
    assert len(all_groups) == 2 * 12 + 3
    parameter = group_names(names, "parameter")
    assert parameter["model.layers.1.self_attn.q_proj.bias"] == parameter["model.layers.0.self_attn.q_proj.weight"]
    assert len(ordered_groups(parameter)) == 12


def test_tied_embedding_model_has_no_separate_lm_head_weight():
    names = names_of(make_model("llama", tied=True, layers=2))
    assert "lm_head" not in ordered_groups(group_names(names, "layer"))
    assert ordered_groups(group_names(names, "layer")) == ["embed_tokens", "layer_00", "layer_01", "norm"]
    assert len(ordered_groups(group_names(names, "parameter"))) == 11


def test_gemma2_extra_norms_are_kinds_of_their_own():
    parameter = ordered_groups(group_names(names_of(make_model("gemma2")), "parameter"))
    assert {"pre_feedforward_layernorm", "post_feedforward_layernorm"} <= set(parameter)


def test_layer_index_is_padded_to_the_widest_index():
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(120)]
    assert group_names(names, "layer")[names[5]] == "layer_005"


def test_gpt2_style_container_is_recognised():
    assert locate("transformer.h.3.attn.c_attn.weight").layer == 3
    assert locate("transformer.wte.weight").module == "wte"


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown optimize mode"):
        group_names(["model.norm.weight"], "tensor")
