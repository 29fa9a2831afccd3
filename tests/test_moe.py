"""The in-memory MoE: equal to the MoE composed on disk, logits of a hand-composed reference, minimal rewrites."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from task_vector_opt.run_config import RunConfig
from task_vector_opt.sources import ModelSource
from task_vector_opt.engine import RunResult, recipe
from task_vector_opt.merging.moe.routers import hidden_router_vectors, random_router_vectors
from task_vector_opt.merging.moe.save import save_outputs
from task_vector_opt.merging.moe.workspace import prepare
from task_vector_opt.merging.moe.config import ExpertPrompts, MoESettings
from task_vector_opt.merging.moe.on_disk import compose_moe_on_disk
from tiny_models import make_moe_models, make_tokenizer

VOCAB = 272  # the tiny tokenizer has 257 tokens
PROMPTS = [ExpertPrompts(["Write a short poem about spring."], ["3+4="]),
           ExpertPrompts(["今日は良い天気です。"]),
           ExpertPrompts(["0 1 2 3 4 5 6 7 8 9"], ["The quick brown fox"]),
           ExpertPrompts(["日本語の質問に答えてください。"])]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """base/tuned/target 1 from make_trio, and three more targets of the same shape with their own weights."""
    return make_moe_models(tmp_path_factory.mktemp("moe_models"), "llama", VOCAB, seed=10)


def run_config(models, tmp_path, n_experts=2, gate_mode="random", mode="layer", base_index=0) -> RunConfig:
    settings = MoESettings(n_experts=n_experts, base_index=base_index, gate_mode=gate_mode, experts_per_token=2,
                           gate_seed=7, prompts=PROMPTS[:n_experts], save_moe=True)
    return RunConfig(
        pipeline="test", targets=[ModelSource(f"--target_model_{i + 1}", str(t))
                                  for i, t in enumerate(models["targets"][:n_experts])],
        base=ModelSource("--base_model", str(models["base"])), tuned=ModelSource("--tuned_model", str(models["tuned"])),
        cache_dir=None, dtype="float32", device="cpu", vector_placement="auto", skip_embed=False,
        trust_remote_code=False, allow_pickle=False, optimize_mode=mode, sampler="TPE", seed=0, n_trials=2,
        weight_min=0.0, weight_max=2.0, storage="", study_name="s", run_dir=tmp_path / "run",
        baseline_trials=True, holdout_top_k=1, output_dir=tmp_path / "moe", overwrite_output_dir=False,
        log_level="INFO", dry_run=False, extra={"moe": settings})


def spread_weights(group_order):
    """Distinct weights per group, some zero, so every rule (copy, add) is exercised."""
    return {g: (0.0 if i % 4 == 3 else 0.25 + 0.3 * i) for i, g in enumerate(group_order)}


def reference_expert(models, target: Path, weights_by_tensor, out: Path) -> Path:
    """target + w * (tuned - base), computed here from full state dicts and saved with save_pretrained."""
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    base, tuned = load_file(models["base"] / "model.safetensors"), load_file(models["tuned"] / "model.safetensors")
    with torch.no_grad():
        for name, param in model.named_parameters():
            w = weights_by_tensor(name)
            if w:
                param.add_(tuned[name] - base[name], alpha=w)
    model.save_pretrained(out)
    make_tokenizer().save_pretrained(out)
    return out


def reference_experts(models, tmp_path, ws, weights, n_experts):
    """Each expert written to disk by an independent path: its searched tensors get their group's weight."""
    dirs = []
    for expert in range(n_experts):
        def weight_of(name, expert=expert):
            group = ws.merger.groups.get(f"expert{expert + 1}/{name}")
            return 0.0 if group is None else weights[group]
        dirs.append(reference_expert(models, models["targets"][expert], weight_of, tmp_path / f"ref{expert + 1}"))
    return dirs


@pytest.mark.parametrize("n_experts,gate_mode,base_index", [(2, "random", 0), (4, "hidden", 1)])
def test_in_memory_moe_equals_the_moe_composed_on_disk_tensor_for_tensor(models, tmp_path, n_experts, gate_mode,
                                                                          base_index):
    config = run_config(models, tmp_path, n_experts, gate_mode, base_index=base_index)
    ws = prepare(config)
    weights = spread_weights(ws.group_order)
    ws.merger.apply(weights)
    expert_dirs = reference_experts(models, tmp_path, ws, weights, n_experts)
    if gate_mode == "random":
        routers = random_router_vectors(2, n_experts, 32, seed=7)
    else:  # the same rule on the base expert reloaded from disk
        dense = AutoModelForCausalLM.from_pretrained(expert_dirs[base_index], dtype=torch.float32)
        routers = hidden_router_vectors(dense, make_tokenizer(), PROMPTS[:n_experts])
    on_disk = compose_moe_on_disk(expert_dirs, base_index, routers, 2, tmp_path / "composed", torch.float32)
    reloaded = AutoModelForCausalLM.from_pretrained(on_disk, dtype=torch.float32).state_dict()
    live = ws.model.state_dict()
    assert set(live) == set(reloaded)
    for name, tensor in reloaded.items():
        if name.endswith("mlp.gate.weight") and gate_mode == "hidden":  # forward passes of two model instances
            torch.testing.assert_close(live[name], tensor, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(live[name], tensor), name

    # the saved experts are the reference experts, and the saved MoE reloads to the live one
    save_outputs(config, recipe(config, RunResult("s", 0.0, 0, weights), ws.n_tensors), ws.moe, ws.expert_dirs,
                 ws.tokenizer)
    for expert, reference in enumerate(expert_dirs):
        saved = load_file(tmp_path / f"moe-{expert + 1}" / "model.safetensors")
        expected = load_file(reference / "model.safetensors")
        assert saved.keys() == expected.keys()
        assert all(torch.equal(saved[k], expected[k]) for k in saved), f"expert {expert + 1}"
    saved_moe = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32).state_dict()
    assert all(torch.equal(saved_moe[k], v) for k, v in live.items())
    yaml_text = (tmp_path / "moe" / "mergekit_moe.yaml").read_text()
    assert f"base_model: {(tmp_path / f'moe-{base_index + 1}').resolve()}" in yaml_text


class HandMoE(torch.nn.Module):
    """One layer's MoE block written out: softmax router, top-k, renormalized, weighted sum of dense MLPs."""

    def __init__(self, mlps, router, top_k):
        super().__init__()
        self.mlps, self.router, self.top_k = mlps, router, top_k

    def forward(self, x):
        probs = torch.softmax((x @ self.router.T).float(), dim=-1)
        top, index = probs.topk(self.top_k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for k in range(self.top_k):
            for e, mlp in enumerate(self.mlps):
                chosen = (index[..., k] == e).unsqueeze(-1)
                out = out + torch.where(chosen, mlp(x) * top[..., k:k + 1], torch.zeros_like(x))
        return out


def test_moe_logits_equal_a_hand_composed_reference(models, tmp_path):
    config = run_config(models, tmp_path, n_experts=4, gate_mode="random", mode="parameter")
    ws = prepare(config)
    weights = spread_weights(ws.group_order)
    ws.merger.apply(weights)
    dirs = reference_experts(models, tmp_path, ws, weights, 4)
    dense = [AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for d in dirs]
    routers = random_router_vectors(2, 4, 32, seed=7)
    reference = dense[0]
    for layer in range(2):
        mlps = [d.model.layers[layer].mlp for d in dense]
        reference.model.layers[layer].mlp = HandMoE(mlps, routers[layer], top_k=2)
    ids = make_tokenizer()(["今日は良い天気です。The quick brown fox"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        got = ws.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(dirs[0], dtype=torch.float32)(input_ids=ids).logits
    assert (got - plain).abs().max() > 100 * (got - expected).abs().max()  # the experts really mix


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed_slices(before, after, n_experts):
    """Which (tensor, expert) pieces changed; fused expert tensors are split per expert."""
    changed = set()
    for name, old in before.items():
        new = after[name]
        if ".mlp.experts." in name or name.endswith("mlp.gate.weight"):
            changed |= {(name, e) for e in range(n_experts) if not torch.equal(old[e], new[e])}
        elif not torch.equal(old, new):
            changed.add((name, None))
    return changed


def test_a_trial_rewrites_only_the_tensors_its_weights_touch(models, tmp_path):
    ws = prepare(run_config(models, tmp_path, n_experts=4, gate_mode="hidden"))
    weights = spread_weights(ws.group_order)
    ws.merger.apply(weights)
    refreshes = ws.merger.router_refreshes

    before = snapshot(ws.model)
    assert ws.merger.apply({**weights, "expert3/layer_01": 1.7}) == 3  # gate, up and down of one expert in one layer
    assert changed_slices(before, snapshot(ws.model), 4) == {("model.layers.1.mlp.experts.gate_up_proj", 2),
                                                             ("model.layers.1.mlp.experts.down_proj", 2)}
    assert ws.merger.router_refreshes == refreshes  # another expert's MLP does not move the hidden-state routers

    before = snapshot(ws.model)
    assert ws.merger.apply({**weights, "expert3/layer_01": 1.7, "expert1/layer_00": 1.9}) == 9  # 7 + 2 norms
    changed = changed_slices(before, snapshot(ws.model), 4)
    assert {n for n, _ in changed if "gate.weight" not in n} == {
        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"}
    assert {e for n, e in changed if ".experts." in n} == {0}
    assert ws.merger.router_refreshes == refreshes + 1
    assert ("model.layers.1.mlp.gate.weight", 0) in changed  # layer 1's input moved, so its routers did

    assert ws.merger.apply({**weights, "expert3/layer_01": 1.7, "expert1/layer_00": 1.9}) == 0


def test_applying_weights_then_others_is_bitwise_identical_to_applying_them_to_a_fresh_moe(models, tmp_path):
    first = prepare(run_config(models, tmp_path / "a", n_experts=2, gate_mode="cheap_embed", mode="all"))
    second = prepare(run_config(models, tmp_path / "b", n_experts=2, gate_mode="cheap_embed", mode="all"))
    a, b = spread_weights(first.group_order), {g: 1.3 for g in first.group_order}
    first.merger.apply(a)
    first.merger.apply(b)
    second.merger.apply(b)
    live, fresh = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(live[k], fresh[k]) for k in live)


@pytest.mark.parametrize("mode,expected", [
    ("layer", ["expert1/layer_00", "expert1/layer_01", "expert1/embed_tokens", "expert1/norm", "expert1/lm_head",
               "expert2/layer_00", "expert2/layer_01"]),
    ("parameter", None),
])
def test_search_space_holds_only_weights_that_change_the_moe(models, tmp_path, mode, expected):
    ws = prepare(run_config(models, tmp_path, n_experts=2, mode=mode))
    if expected is not None:
        assert sorted(ws.group_order) == sorted(expected)
    else:
        assert [g for g in ws.group_order if g.startswith("expert2/")] == [
            "expert2/mlp.gate_proj", "expert2/mlp.up_proj", "expert2/mlp.down_proj"]
        assert len([g for g in ws.group_order if g.startswith("expert1/")]) == 12
    assert ws.n_tensors == 2 * 9 + 3 + 2 * 3  # base: all 21 tensors; expert 2: 6 MLP tensors


GIB = 2**30


@pytest.mark.parametrize("n_experts,expected", [(2, ("cuda", "cuda")), (4, ("cpu", "cuda"))])
def test_auto_placement_for_7b_experts_on_an_80_gb_gpu(n_experts, expected):
    """The MoE memory table (docs/en/hardware.md): Mistral-7B experts are 13.5 GiB, their MLPs 10.5 GiB (bfloat16)."""
    from task_vector_opt.merging.moe.placement import auto_placement

    dense, mlp = 13.49 * GIB, 10.5 * GIB
    moe_bytes = dense + (n_experts - 1) * mlp
    free = 79.1 * GIB - moe_bytes  # what an H100 80 GB reports free once the MoE is on it
    assert auto_placement(int(free), int(moe_bytes), int(moe_bytes), int(dense), "cuda") == expected
    assert auto_placement(int(5 * GIB), int(moe_bytes), int(moe_bytes), int(dense), "cuda") == ("cpu", "cpu")


def test_a_write_that_fails_mid_trial_leaves_the_routers_to_be_refreshed_by_the_next_apply(models, tmp_path):
    ws = prepare(run_config(models, tmp_path / "a", n_experts=2, gate_mode="hidden"))
    fresh = prepare(run_config(models, tmp_path / "b", n_experts=2, gate_mode="hidden"))
    weights = spread_weights(ws.group_order)
    base_slot = next(i for i, s in enumerate(ws.merger.slots) if s.key.startswith("expert1/model.layers.0."))
    last = ws.merger.slots[-1]
    good_origin = last.origin
    last.origin = torch.zeros(7, 5, 3)  # the last write fails (shapes do not broadcast), after base-expert writes
    with pytest.raises(RuntimeError):
        ws.merger.apply(weights)
    assert ws.merger.current[ws.merger.slots[base_slot].key] != 0.0  # a router input was rewritten ...
    last.origin = good_origin
    ws.merger.apply(weights)  # ... so this apply recomputes the routers although those writes are done
    fresh.merger.apply(weights)
    live, reference = ws.model.state_dict(), fresh.model.state_dict()
    assert all(torch.equal(live[k], reference[k]) for k in live)
