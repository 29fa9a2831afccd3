import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from task_vector_opt.errors import TaskVectorMismatch
from task_vector_opt.merging.grouping import group_names, ordered_groups
from task_vector_opt.merging.merger import Merger
from task_vector_opt.merging.task_vector import build_task_vector
from tiny_models import make_trio


def load(path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def setup_merger(paths, mode="all", dtype=torch.float32, **kwargs):
    model = load(paths["target"], dtype)
    vector = build_task_vector(model, paths["base"], paths["tuned"], dtype=dtype, store_device="cpu", **kwargs)
    groups = group_names(list(vector), mode)
    return model, vector, Merger(model, vector, groups, "cpu"), ordered_groups(groups)


def random_weights(names, seed):
    generator = torch.Generator().manual_seed(seed)
    return {name: float(torch.empty(1).uniform_(-0.5, 2.0, generator=generator)) for name in names}


def state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("arch,dtype", [("mistral", torch.bfloat16), ("llama", torch.float32),
                                        ("qwen2", torch.bfloat16), ("gemma2", torch.float16)])
def test_applying_weights_a_then_b_is_bitwise_identical_to_applying_b_to_a_fresh_load(tmp_path, arch, dtype):
    paths = make_trio(tmp_path, arch)
    model, _, merger, names = setup_merger(paths, "all", dtype)
    weights_a, weights_b = random_weights(names, 1), random_weights(names, 2)
    weights_b[names[0]] = 0.0  # one tensor back to the target exactly
    weights_b[names[1]] = weights_a[names[1]]  # one tensor unchanged between A and B
    merger.apply(weights_a)
    merger.apply(weights_b)
    after_a_then_b = state(model)

    fresh, _, fresh_merger, _ = setup_merger(paths, "all", dtype)
    fresh_merger.apply(weights_b)
    for name, tensor in state(fresh).items():  # compare the raw bytes: bit for bit, signed zeros included
        assert torch.equal(after_a_then_b[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_weights_equal_target_plus_w_times_tuned_minus_base(tmp_path):
    paths = make_trio(tmp_path, "llama")
    model, _, merger, names = setup_merger(paths, "layer")
    weights = {name: 0.5 + i / 10 for i, name in enumerate(names)}
    merger.apply(weights)
    target, base, tuned = (state(load(paths[k])) for k in ("target", "base", "tuned"))
    groups = group_names(list(target), "layer")
    for name, value in state(model).items():
        expected = target[name] + weights[groups[name]] * (tuned[name] - base[name])
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_weight_zero_restores_the_target_exactly(tmp_path):
    paths = make_trio(tmp_path, "mistral")
    model, _, merger, names = setup_merger(paths, "all", torch.bfloat16)
    original = state(model)
    merger.apply(random_weights(names, 3))
    merger.apply(dict.fromkeys(names, 0.0))
    for name, tensor in state(model).items():
        assert torch.equal(tensor.view(torch.uint8), original[name].view(torch.uint8)), name


def test_only_tensors_whose_weight_changed_are_rewritten(tmp_path):
    paths = make_trio(tmp_path, "llama")
    _, _, merger, names = setup_merger(paths, "layer")
    assert merger.apply(dict.fromkeys(names, 1.0)) == len(merger.vector)
    changed = dict.fromkeys(names, 1.0) | {"layer_01": 0.3}
    assert merger.apply(changed) == 9  # the nine tensors of layer 1
    assert merger.apply(changed) == 0


def test_tied_target_gets_the_embedding_delta_once(tmp_path):
    paths = make_trio(tmp_path, "llama", tied=True)
    model, vector, merger, names = setup_merger(paths, "layer")
    assert "lm_head.weight" not in vector
    merger.apply(dict.fromkeys(names, 1.0))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    target, base, tuned = (load(paths[k]) for k in ("target", "base", "tuned"))
    expected = target.model.embed_tokens.weight + (tuned.model.embed_tokens.weight - base.model.embed_tokens.weight)
    torch.testing.assert_close(model.lm_head.weight, expected)


def test_untied_target_with_tied_base_and_tuned_gets_the_embedding_delta_on_lm_head(tmp_path):
    tied = make_trio(tmp_path / "tied", "llama", tied=True)
    untied = make_trio(tmp_path / "untied", "llama", tied=False)
    model = load(untied["target"])
    vector = build_task_vector(model, tied["base"], tied["tuned"], dtype=torch.float32, store_device="cpu")
    assert torch.equal(vector["lm_head.weight"].delta, vector["model.embed_tokens.weight"].delta)


def test_extended_target_vocabulary_gets_the_vector_on_shared_rows_only(tmp_path, caplog):
    paths = make_trio(tmp_path, "llama", vocab_size=256, target_vocab=300)
    with caplog.at_level(logging.WARNING):
        model, vector, merger, names = setup_merger(paths, "layer")
    assert "vocabulary sizes differ" in caplog.text
    assert vector["model.embed_tokens.weight"].rows == 256
    before = model.model.embed_tokens.weight.detach().clone()
    merger.apply(dict.fromkeys(names, 1.0))
    after = model.model.embed_tokens.weight
    assert torch.equal(after[256:], before[256:])
    assert not torch.equal(after[:256], before[:256])


def test_skip_embed_leaves_embeddings_and_lm_head_out_of_the_vector(tmp_path):
    paths = make_trio(tmp_path, "llama", vocab_size=256, target_vocab=300)
    _, vector, _, names = setup_merger(paths, "layer", skip_embed=True)
    assert "model.embed_tokens.weight" not in vector and "lm_head.weight" not in vector
    assert "embed_tokens" not in names and "lm_head" not in names


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    paths = make_trio(tmp_path / "a", "llama", hidden=32)
    other = make_trio(tmp_path / "b", "llama", hidden=64)
    model = load(other["target"])
    with pytest.raises(TaskVectorMismatch, match=r"tensor model\.embed_tokens\.weight: the target has shape \(256, 64\) but the task vector has \(256, 32\)"):
        build_task_vector(model, paths["base"], paths["tuned"], dtype=torch.float32, store_device="cpu")


def test_missing_tensor_is_named(tmp_path):
    small = make_trio(tmp_path / "a", "llama", layers=2)
    big = make_trio(tmp_path / "b", "llama", layers=3)
    with pytest.raises(TaskVectorMismatch, match=r"model\.layers\.2\..*missing from --base_model"):
        build_task_vector(load(big["target"]), small["base"], small["tuned"], dtype=torch.float32,
                          store_device="cpu")
