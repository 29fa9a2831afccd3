"""The MoE with several task vectors and TIES / DARE: every expert is the dense merge of its own target, slot by slot."""
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from task_vector_opt.sources import ModelSource
from task_vector_opt.merging.grouping import group_names
from task_vector_opt.merging.merger import Merger
from task_vector_opt.merging.methods import MergeSettings
from task_vector_opt.merging.moe.layout import expert_weights, split_slot_key
from task_vector_opt.merging.moe.workspace import prepare
from task_vector_opt.merging.task_vector import build_task_vector
from test_moe import run_config
from test_moe_pipeline import ROOT, common_flags, finished_trials, run, setup  # noqa: F401 (setup: a fixture)
from tiny_models import make_moe_models, make_tokenizer

VOCAB = 272  # the tiny tokenizer has 257 tokens


def second_fine_tune(base: Path, out: Path) -> Path:
    """Another fine-tune of the same base: base + noise of its own seed."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    generator = torch.Generator().manual_seed(77)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(out)
    make_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_methods")
    models = make_moe_models(root, "llama", VOCAB, seed=30)
    return {**models, "tuned2": second_fine_tune(models["base"], root / "tuned2")}


def two_vector_config(models, tmp_path, method, n_experts=2, base_index=0, per_group=False):
    config = run_config(models, tmp_path, n_experts=n_experts, gate_mode="random", base_index=base_index)
    tuned = [ModelSource("--tuned_model", str(models["tuned"])), ModelSource("--tuned_model", str(models["tuned2"]))]
    merge = MergeSettings(method, density_min=0.1, density_max=1.0, density_per_group=per_group,
                          dare_seed=3 if method.startswith("dare") else None)
    return dataclasses.replace(config, tuned_models=tuned, merge=merge)


def trial_params(ws, shift=0.0):
    """Distinct weights (some zero, some negative) and densities inside the searched range."""
    params = {g: (0.0 if i % 5 == 4 else -0.4 + 0.35 * i + shift) for i, g in enumerate(ws.group_order)}
    params.update({d: round(0.25 + 0.2 * i + shift / 4, 3) for i, d in enumerate(ws.densities)})
    return params


def dense_expert(models, expert, params, settings):
    """Target ``expert`` merged by the dense Merger with that expert's weights and the shared densities."""
    model = AutoModelForCausalLM.from_pretrained(models["targets"][expert], dtype=torch.float32)
    vectors = [build_task_vector(model, models["base"], models[k], dtype=torch.float32, store_device="cpu")
               for k in ("tuned", "tuned2")]
    merger = Merger(model, vectors, group_names(list(vectors[0]), "layer"), "cpu", settings)
    weights = {**expert_weights(params, expert), **{k: v for k, v in params.items() if k.startswith("density/")}}
    # The MoE takes only the MLP weights of a non-base expert: its other groups stay at the target (weight 0).
    merger.apply({**{name: 0.0 for name in merger.weight_names()}, **weights})
    return dict(model.named_parameters())


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_each_expert_of_a_two_vector_moe_equals_the_dense_merge_of_its_target(models, tmp_path, method):
    ws = prepare(two_vector_config(models, tmp_path, method, n_experts=3, base_index=1))
    assert "expert2/v2/layer_01" in ws.group_order and "expert3/v1/layer_00" in ws.group_order
    assert set(ws.densities) == {"density/v1", "density/v2"}
    params = trial_params(ws)
    ws.merger.apply(params)
    for expert in range(3):
        dense = dense_expert(models, expert, params, ws.merger.settings)
        slots = [s for s in ws.merger.slots if split_slot_key(s.key)[0] == expert]
        assert slots
        for slot in slots:
            name = split_slot_key(slot.key)[1]
            assert torch.equal(ws.moe.live(slot.key), dense[name].data), slot.key
    # and the merge moved the experts: a test of equal copies of the targets would prove nothing
    target = AutoModelForCausalLM.from_pretrained(models["targets"][2], dtype=torch.float32)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(ws.moe.live(f"expert3/{name}"), dict(target.named_parameters())[name].data)


@pytest.mark.parametrize("method,per_group", [("ties", True), ("dare_ties", False), ("dare_linear", False)])
def test_applying_a_then_b_to_a_two_vector_moe_is_bitwise_b_from_scratch(models, tmp_path, method, per_group):
    first = prepare(two_vector_config(models, tmp_path / "a", method, per_group=per_group))
    second = prepare(two_vector_config(models, tmp_path / "b", method, per_group=per_group))
    if per_group:
        assert "density/v2/expert2/layer_01" in first.densities
    a, b = trial_params(first), trial_params(first, shift=0.3)
    first.merger.apply(a)
    assert first.merger.apply(a) == 0  # unchanged settings rewrite nothing
    first.merger.apply(b)
    second.merger.apply(b)
    live, fresh = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(live[k], fresh[k]) for k in live)


def test_one_vector_under_task_arithmetic_keeps_the_moe_names_of_old_studies(models, tmp_path):
    ws = prepare(run_config(models, tmp_path))
    assert set(ws.group_order) == {"expert1/layer_00", "expert1/layer_01", "expert1/embed_tokens", "expert1/norm",
                                   "expert1/lm_head", "expert2/layer_00", "expert2/layer_01"}
    assert not ws.densities and ws.merger.plain


@pytest.fixture(scope="module")
def e2e(setup):
    """test_moe_pipeline's tiny experts and in-process judge, plus a second fine-tune of the same base."""
    return {**setup, "tuned2": second_fine_tune(setup["base"], setup["base"].parent / "tuned2")}


def test_two_tuned_models_under_dare_ties_end_to_end_save_each_experts_dense_merge(e2e, tmp_path):
    flags = common_flags(e2e, tmp_path, 2)
    flags[flags.index("--tuned_model") + 1] = f"{e2e['tuned']},{e2e['tuned2']}"
    done = run([sys.executable, str(ROOT / "merge_task_vector_mt_bench_moe_2_experts.py"), *flags,
                "--merge_method", "dare_ties", "--dare_seed", "3", "--no_baseline_trials"])
    assert done.returncode == 0, done.stderr[-4000:]
    trials = finished_trials(tmp_path / "run")
    assert len(trials) == 2 and all(1.0 <= t.value <= 10.0 for t in trials)
    # the default search: a scale per expert and vector first, then knots per expert and vector (factors of it)
    assert {"scale/expert1/v1", "scale/expert2/v2", "expert1/v1/lm_head", "expert2/v2/knot_1", "density/v1",
            "density/v2"} <= set(trials[0].params)
    best = max(trials, key=lambda t: t.value)
    weights = best.user_attrs["weights"]  # the merger's weights the best trial's scales and knots give
    recipe = json.loads((tmp_path / "moe-2" / "merge_recipe.json").read_text())
    assert recipe["weights"]["v2/layer_01"] == weights["expert2/v2/layer_01"]
    assert recipe["weights"]["density/v1"] == best.params["density/v1"] == weights["density/v1"]
    # the saved expert 2 is the dense merge of target 2 with the best trial's weights and densities
    dense = dense_expert(e2e, 1, weights, MergeSettings("dare_ties", dare_seed=3))
    saved = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "moe-2", dtype=torch.float32).named_parameters())
    mlp = [n for n in saved if ".mlp." in n]
    assert mlp and all(torch.equal(saved[n].data, dense[n].data) for n in mlp)
