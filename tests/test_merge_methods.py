"""Several task vectors and TIES / DARE: exact against mergekit, exact across trials, cheap per density."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from task_vector_opt.merging.grouping import group_names
from task_vector_opt.merging.merger import Merger
from task_vector_opt.merging.methods import MergeSettings, dare_keep_mask, magnitude_thresholds
from task_vector_opt.merging.task_vector import build_task_vector
from task_vector_opt.outputs.mergekit_export import layout_from_merger, mergekit_config
from tiny_models import make_model, make_tokenizer, save

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and three fine-tunes of it (base + noise of different seeds), as mergekit-evolve merges them."""
    root = tmp_path_factory.mktemp("methods")
    tokenizer = make_tokenizer()
    out = {"base": save(make_model("llama", seed=0), tokenizer, root / "base")}
    for index in range(1, 4):
        model = make_model("llama", seed=0)
        torch.manual_seed(100 + index)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.01)
        out[f"ft{index}"] = save(model, tokenizer, root / f"ft{index}")
    return out


def merger_over(models, tuned, settings, target="base", mode="layer", dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(models[target], dtype=dtype).eval()
    vectors = [build_task_vector(model, models["base"], models[k], dtype=dtype, store_device="cpu") for k in tuned]
    return model, Merger(model, vectors, group_names(list(vectors[0]), mode), "cpu", settings)


def spread_params(merger, densities=(0.3, 0.65, 0.5)):
    """Distinct weights per vector and group (one negative), densities on the grid."""
    params = {name: round(0.2 + 0.07 * i, 3) for i, name in enumerate(merger.weight_names())}
    params[merger.weight_names()[1]] = -0.4
    for i, name in enumerate(merger.density_names()):
        params[name] = densities[i % len(densities)] + 0.05 * (i // len(densities))
    return params


def recipe_inputs(models, tuned, settings, target="base"):
    return {"targets": [str(models[target])], "base_model": str(models["base"]),
            "tuned_model": [str(models[k]) for k in tuned], "dtype": "float32", "merge": settings.recipe_inputs()}


def state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_close_to(saved: dict, merged: dict, atol=1e-6):
    for name, tensor in merged.items():
        difference = (saved[name].float() - tensor.float()).abs().max().item()
        assert difference <= atol, f"{name}: differs from mergekit by {difference}"


@pytest.mark.parametrize("settings", [MergeSettings("task_arithmetic"),
                                      MergeSettings("ties", normalize=True),
                                      MergeSettings("ties", density_per_group=True)],
                         ids=["task_arithmetic", "ties-normalize", "ties-density-per-group"])
def test_our_merge_equals_mergekit_yaml_of_our_exported_config(models, tmp_path, settings):
    tuned = ["ft1", "ft2", "ft3"]
    model, merger = merger_over(models, tuned, settings)
    params = spread_params(merger)
    merger.apply(params)
    config = mergekit_config(recipe_inputs(models, tuned, settings), params, layout_from_merger(model, merger))
    parsed = yaml.safe_load(config)
    assert parsed["merge_method"] == settings.method and len(parsed["models"]) == 3
    (tmp_path / "mergekit_config.yml").write_text(config)
    done = subprocess.run([str(MERGEKIT_YAML), str(tmp_path / "mergekit_config.yml"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = {}
    for file in (tmp_path / "out").glob("*.safetensors"):
        saved.update(load_file(file))
    assert_close_to(saved, state(model))
    # and the merge really is sparse where TIES trims: not simply task arithmetic
    if settings.method == "ties":
        _, plain = merger_over(models, tuned, MergeSettings("task_arithmetic"))
        plain.apply({k: v for k, v in params.items() if not k.startswith("density/")})
        assert any((plain.params[n].detach() - model.get_parameter(n).detach()).abs().max() > 1e-4
                   for n in merger.vector)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_equals_mergekits_definition_under_the_same_masks(models, tmp_path, monkeypatch, method):
    """mergekit draws its own masks; handed ours, its merge (and its L1 rescale) equals ours."""
    import mergekit.sparsify
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    tuned = ["ft1", "ft2"]
    settings = MergeSettings(method, dare_seed=7, dare_rescale="l1")
    model, merger = merger_over(models, tuned, settings)
    params = spread_params(merger)
    merger.apply(params)
    densities = [params[name] for name in merger.density_names()]
    used = []

    def our_mask(tensor, density, rescale_norm=None):
        """Find which vector and tensor mergekit is sparsifying (its delta equals one of ours), use our mask."""
        for index, vector in enumerate(merger.vectors):
            for name, entry in vector.items():
                if entry.delta.shape == tensor.shape and torch.equal(entry.delta, tensor):
                    assert density == pytest.approx(densities[index])
                    keep = dare_keep_mask(name, index, tensor.shape, densities[index], settings.seed,
                                          tensor.device)
                    used.append(name)
                    return mergekit.sparsify.rescaled_masked_tensor(tensor, keep.to(tensor.dtype), rescale_norm)
        raise AssertionError("mergekit sparsified a tensor that is no task vector of ours")

    monkeypatch.setattr(mergekit.sparsify, "bernoulli", our_mask)
    config = mergekit_config(recipe_inputs(models, tuned, settings), params, layout_from_merger(model, merger))
    assert "mergekit draws its own" in config and yaml.safe_load(config)["parameters"]["rescale"] is True
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(config)), str(tmp_path / "out"),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    saved = {}
    for file in (tmp_path / "out").glob("*.safetensors"):
        saved.update(load_file(file))
    assert len(set(used)) == len(merger.vector)
    assert_close_to(saved, state(model))


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear", "dare_ties"])
def test_applying_a_then_b_is_bitwise_identical_to_b_from_scratch_for_every_method(models, method):
    settings = MergeSettings(method, density_per_group=method != "task_arithmetic", normalize=method == "ties")
    model, merger = merger_over(models, ["ft1", "ft2"], settings, target="ft3", mode="all", dtype=torch.bfloat16)
    first = spread_params(merger)
    second = {name: (value * 1.3 if i % 3 else value) for i, (name, value) in enumerate(first.items())}
    for name in merger.density_names()[::2]:
        second[name] = 0.9
    second[merger.weight_names()[0]] = 0.0  # one tensor's first vector off
    merger.apply(first)
    rewritten = merger.apply(second)
    assert 0 < rewritten <= len(merger.vector)
    fresh_model, fresh = merger_over(models, ["ft1", "ft2"], settings, target="ft3", mode="all",
                                     dtype=torch.bfloat16)
    fresh.apply(second)
    for name, tensor in state(fresh_model).items():
        assert torch.equal(state(model)[name].view(torch.uint16), tensor.view(torch.uint16)), name


def test_one_vector_under_task_arithmetic_keeps_todays_names_and_fused_add(models):
    model, merger = merger_over(models, ["ft1"], MergeSettings())
    assert merger.density_names() == [] and not any("/" in n for n in merger.weight_names())
    params = {name: 0.7 for name in merger.weight_names()}
    merger.apply(params)
    target = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32)
    vector = build_task_vector(target, models["base"], models["ft1"], dtype=torch.float32, store_device="cpu")
    for name, entry in vector.items():
        expected = torch.add(target.get_parameter(name).detach(), entry.delta, alpha=0.7)
        assert torch.equal(model.get_parameter(name).detach(), expected), name


def test_several_vectors_get_readable_parameter_names(models):
    _, merger = merger_over(models, ["ft1", "ft2"], MergeSettings("dare_ties", density_per_group=True))
    assert "v2/layer_01" in merger.weight_names() and "density/v2/layer_01" in merger.density_names()
    _, merger = merger_over(models, ["ft1", "ft2"], MergeSettings("ties"))
    assert merger.density_names() == ["density/v1", "density/v2"]


def test_ties_thresholds_keep_exactly_the_top_k_magnitudes_at_every_grid_density():
    delta = torch.randn(37, 11)
    table = magnitude_thresholds(delta, 0.1, 1.0)
    assert len(table) == 901
    for density in (0.1, 0.333, 0.5, 0.999, 1.0):
        k = max(1, int(density * delta.numel()))
        kept = delta.abs() >= table[round(density * 1000) - 100]
        assert kept.sum().item() == k
        top = set(torch.topk(delta.abs().flatten(), k).indices.tolist())
        assert top == set(kept.flatten().nonzero()[:, 0].tolist())


def test_dare_masks_are_fixed_by_the_seed_and_nested_across_densities(monkeypatch):
    import task_vector_opt.merging.methods as methods

    monkeypatch.setattr(methods, "CHUNK", 1000)  # several chunks, each with its own generator
    name, shape, cpu = "model.layers.0.mlp.up_proj.weight", torch.Size([64, 64]), torch.device("cpu")
    low = dare_keep_mask(name, 0, shape, 0.3, 42, cpu)
    assert torch.equal(low, dare_keep_mask(name, 0, shape, 0.3, 42, cpu))
    high = dare_keep_mask(name, 0, shape, 0.6, 42, cpu)
    assert bool((high | ~low).all()) and 0.25 < low.float().mean() < 0.35
    assert not torch.equal(low, dare_keep_mask(name, 0, shape, 0.3, 43, cpu))
    assert not torch.equal(low, dare_keep_mask(name, 1, shape, 0.3, 42, cpu))
    flat = low.flatten()
    assert not torch.equal(flat[:1000], flat[1000:2000])  # each chunk draws from its own generator


def test_dare_inverse_density_rescale_is_the_papers_formula(models):
    settings = MergeSettings("dare_linear", dare_seed=3)
    model, merger = merger_over(models, ["ft1", "ft2"], settings, mode="all")
    params = spread_params(merger, densities=(0.4, 0.8))
    merger.apply(params)
    base = state(AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32))
    densities = [params["density/v1"], params["density/v2"]]
    for name in merger.vector:
        expected = base[name].clone()
        for index, vector in enumerate(merger.vectors):
            keep = dare_keep_mask(name, index, base[name].shape, densities[index], 3, torch.device("cpu"))
            weight = params[merger.names.weight(index, merger.groups[name])]
            expected += weight * vector[name].delta * keep / densities[index]
        assert torch.allclose(model.get_parameter(name).detach(), expected, atol=1e-6), name


@pytest.mark.parametrize("settings", [MergeSettings("task_arithmetic"), MergeSettings("ties"),
                                      MergeSettings("ties", normalize=True), MergeSettings("dare_linear")])
def test_a_tensor_merged_in_chunks_equals_the_tensor_merged_at_once(monkeypatch, settings):
    """Chunking bounds the work buffers; it must not change a value (DARE's masks are drawn per chunk by
    definition, so there only the drop-free part is compared: density 1)."""
    import task_vector_opt.merging.methods as methods

    torch.manual_seed(0)
    origin = torch.randn(33, 70, dtype=torch.bfloat16)
    deltas = [torch.randn(33, 70, dtype=torch.bfloat16) * 0.02 for _ in range(3)]
    densities = [1.0, 1.0, 1.0] if settings.drops else [0.3, 0.55, 1.0]
    sources = methods.TensorSources("t", origin, deltas,
                                    [magnitude_thresholds(d, 0.1, 1.0) for d in deltas], 100)
    whole, chunked = torch.empty_like(origin), torch.empty_like(origin)
    methods.write_combined(whole, sources, [0.7, -0.4, 1.2], densities, settings)
    monkeypatch.setattr(methods, "CHUNK", 128)
    methods.write_combined(chunked, sources, [0.7, -0.4, 1.2], densities, settings)
    assert torch.equal(whole.view(torch.uint16), chunked.view(torch.uint16))
    assert not torch.equal(whole, origin)


def test_the_model_card_names_every_source_model_and_the_flags_that_reproduce_the_merge():
    from task_vector_opt.outputs.model_card import metadata, reproduce_command

    inputs = {"pipeline": "jglue", "targets": ["org/target"], "base_model": "org/base",
              "tuned_model": ["org/tuned-a", "org/tuned-b"], "optimize_mode": "layer", "dtype": "bfloat16",
              "merge": MergeSettings("dare_ties", density_min=0.2, dare_seed=5).recipe_inputs()}
    assert metadata(inputs)["base_model"] == ["org/target", "org/tuned-a", "org/tuned-b", "org/base"]
    command = reproduce_command(inputs, "study", "sqlite:///s.db")
    for fragment in ("--tuned_model org/tuned-a,org/tuned-b", "--merge_method dare_ties", "--density_min 0.2",
                     "--dare_seed 5 --dare_rescale inverse_density"):
        assert fragment in command, command


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties"])
def test_scaled_profiles_of_several_vectors_give_exactly_the_merge_their_weights_say(models, method):
    """Scale-first profiles (a scale and knots per vector) turn into per-group weights; applying A then B equals
    B from scratch, and equals the merger given those weights directly."""
    from task_vector_opt.search.scale_first import ScaledSpace
    from task_vector_opt.search.space import search_space

    settings = MergeSettings(method)
    model, merger = merger_over(models, ["ft1", "ft2"], settings, target="ft3", mode="profile")
    space = ScaledSpace(search_space(merger.weight_names(), "profile", 2), 0.0, 2.0)
    assert space.scales == ["scale/v1", "scale/v2"]
    assert {"v1/knot_0", "v1/knot_1", "v2/knot_0", "v2/knot_1"} <= set(space.params)
    densities = dict.fromkeys(merger.density_names(), 0.5)
    a = {**space.uniform((0.1, 0.0)), **densities}
    b = {**{name: 0.3 + 0.1 * i for i, name in enumerate(space.params)}, "scale/v1": 1.5, "scale/v2": 0.4,
         **dict.fromkeys(merger.density_names(), 0.8)}
    weights_b = space.weights(b)
    assert set(weights_b) == set(merger.weight_names()) | set(merger.density_names())
    assert weights_b["v2/layer_00"] == pytest.approx(0.4 + b["v2/knot_0"])  # the first layer sits on the first knot
    merger.apply(space.weights(a))
    merger.apply(weights_b)
    fresh_model, fresh = merger_over(models, ["ft1", "ft2"], settings, target="ft3", mode="profile")
    fresh.apply(weights_b)
    for name, tensor in state(fresh_model).items():
        assert torch.equal(state(model)[name], tensor), name
    untouched = state(merger_over(models, ["ft1", "ft2"], settings, target="ft3")[0])
    assert any(not torch.equal(state(model)[name], tensor) for name, tensor in untouched.items())  # it merged
