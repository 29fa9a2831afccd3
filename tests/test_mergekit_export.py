"""The mergekit export gives every tensor its group's weight under mergekit's own filter rules, in every mode."""
import pytest
import yaml

from task_vector_opt.merging.grouping import group_names
from task_vector_opt.outputs.mergekit_export import MergeLayout, mergekit_config
from tiny_models import make_model

INPUTS = {"targets": ["org/target"], "base_model": "org/base", "tuned_model": "org/tuned", "dtype": "bfloat16"}


def tuned_weight_of(config: dict, tensor: str) -> float:
    """mergekit's own rule (its config model and evaluate_setting): the first filter that is a substring wins."""
    from mergekit.config import MergeConfiguration, evaluate_setting

    parsed = MergeConfiguration.model_validate(config)
    (tuned,) = [m for m in parsed.models if str(m.model) == INPUTS["tuned_model"]]
    return evaluate_setting(tensor, tuned.parameters["weight"], validate=float)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # qwen2: q/k/v biases share their module's weight
@pytest.mark.parametrize("mode", ["all", "layer", "parameter"])
def test_each_tensor_gets_its_own_groups_weight_under_mergekit_filter_rules(arch, mode):
    model = make_model(arch, layers=12)  # 12 layers: "layers.1." must not catch layers 10 and 11
    names = [n for n, _ in model.named_parameters()]
    merged = [n for n in names if "embed_tokens" not in n]  # as with --skip_embed: embeddings stay the target's
    groups = group_names(merged, mode)
    weights = {g: round(0.01 * (i + 1), 2) for i, g in enumerate(dict.fromkeys(groups.values()))}
    config = yaml.safe_load(mergekit_config(INPUTS, weights, MergeLayout(names, groups)))
    assert config["merge_method"] == "task_arithmetic" and config["base_model"] == "org/base"
    assert config["parameters"] == {"normalize": False, "lambda": 1.0}
    assert config["models"][0] == {"model": "org/target", "parameters": {"weight": 1.0}}
    for name in names:
        expected = weights[groups[name]] if name in groups else 0.0
        assert tuned_weight_of(config, name) == expected, name


def test_layer_mode_needs_one_filter_per_layer():
    model = make_model("llama", layers=12)
    names = [n for n, _ in model.named_parameters()]
    groups = group_names(names, "layer")
    config = yaml.safe_load(mergekit_config(INPUTS, dict.fromkeys(groups.values(), 0.5), MergeLayout(names, groups)))
    filters = [c.get("filter") for c in config["models"][1]["parameters"]["weight"]]
    assert "model.layers.1." in filters and len(filters) == 12 + 3 + 1  # layers, embed/norm/lm_head, catch-all


def test_a_merge_mergekit_cannot_express_says_so_and_gives_no_config():
    model = make_model("llama")
    names = [n for n, _ in model.named_parameters()]
    groups = group_names(names, "layer")
    text = mergekit_config(INPUTS, dict.fromkeys(groups.values(), 1.0),
                           MergeLayout(names, groups, partial_rows={"model.embed_tokens.weight": 200}))
    assert yaml.safe_load(text) is None  # comments only
    assert "cannot reproduce" in text and "model.embed_tokens.weight" in text and "first 200 rows" in text
    assert "cannot reproduce" in mergekit_config(INPUTS, {}, None)


def test_a_target_equal_to_base_is_listed_once():
    model = make_model("llama")
    names = [n for n, _ in model.named_parameters()]
    groups = group_names(names, "parameter")
    inputs = dict(INPUTS, targets=["org/base"])
    config = yaml.safe_load(mergekit_config(inputs, dict.fromkeys(groups.values(), 1.0), MergeLayout(names, groups)))
    assert [m["model"] for m in config["models"]] == ["org/tuned"]
