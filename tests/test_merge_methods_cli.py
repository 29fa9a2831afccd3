"""Bad input of several vectors and merge methods: one line naming the flag, exit code 2, before any model loads."""
import json

import pytest

from task_vector_opt import engine
from task_vector_opt.cli.flags import run_cli
from task_vector_opt.cli.pipelines import JGLUE, MT_BENCH_MOE_2, run_pipeline
from cli_checks import expect_usage_error, refuse_model_loads
from mini_bench import write_mini_bench
from tiny_models import make_model, make_trio, save


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("trio")
    paths = make_trio(root, "llama")
    paths["wider"] = save(make_model("llama", hidden=64), None, root / "wider")  # same names, other shapes
    paths["deeper"] = save(make_model("llama", layers=3), None, root / "deeper")  # one more layer's names
    return paths


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    refuse_model_loads(monkeypatch, engine)


def args(trio, tmp_path, tuned=None, *extra):
    return ["--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
            tuned or str(trio["tuned"]), "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"),
            *extra]


def fails_with(argv, capsys, flag, *fragments):
    return expect_usage_error(lambda a: run_pipeline(JGLUE, a), argv, capsys, flag, *fragments)


def test_a_tuned_model_with_other_shapes_than_the_base(trio, tmp_path, capsys):
    tuned = f"{trio['tuned']},{trio['wider']}"
    fails_with(args(trio, tmp_path, tuned), capsys, "--tuned_model", "wider", "shape", "same architecture")


def test_a_tuned_model_with_other_tensor_names_than_the_base(trio, tmp_path, capsys):
    tuned = f"{trio['tuned']},{trio['deeper']}"
    fails_with(args(trio, tmp_path, tuned), capsys, "--tuned_model", "deeper", "model.layers.2.", "base lacks")


def test_the_same_tuned_model_twice(trio, tmp_path, capsys):
    tuned = f"{trio['tuned']},{trio['target']},{trio['tuned']}/"
    fails_with(args(trio, tmp_path, tuned), capsys, "--tuned_model", "given twice", "list it once")


def test_an_empty_entry_in_the_tuned_models(trio, tmp_path, capsys):
    fails_with(args(trio, tmp_path, f"{trio['tuned']},"), capsys, "--tuned_model", "empty entry")


@pytest.mark.parametrize("flag,value", [("--density_min", "0"), ("--density_max", "1.5"), ("--density_min", "-0.2")])
def test_a_density_range_outside_zero_to_one(trio, tmp_path, capsys, flag, value):
    fails_with(args(trio, tmp_path, None, "--merge_method", "ties", flag, value), capsys, flag, value, "(0, 1]")


def test_a_density_min_above_the_max(trio, tmp_path, capsys):
    fails_with(args(trio, tmp_path, None, "--merge_method", "ties", "--density_min", "0.8", "--density_max", "0.5"),
               capsys, "--density_min", "0.8", "0.5")


def test_a_density_off_the_grid(trio, tmp_path, capsys):
    fails_with(args(trio, tmp_path, None, "--merge_method", "ties", "--density_min", "0.12345"), capsys,
               "--density_min", "0.001", "0.123")


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_dare_seed_with_a_method_that_drops_nothing(trio, tmp_path, capsys, method):
    fails_with(args(trio, tmp_path, None, "--merge_method", method, "--dare_seed", "3"), capsys, "--dare_seed",
               method, "dare_ties")


def test_density_per_group_with_task_arithmetic(trio, tmp_path, capsys):
    fails_with(args(trio, tmp_path, None, "--density_per_group"), capsys, "--density_per_group", "ties")


def test_the_moe_plan_counts_each_experts_weights_per_vector_and_the_densities(trio, tmp_path, capsys):
    judge_file = write_mini_bench(tmp_path / "data")
    argv = ["--target_model_1", str(trio["target"]), "--target_model_2", str(trio["tuned"]), "--base_model",
            str(trio["base"]), "--tuned_model", f"{trio['tuned']},{trio['target']}", "--output_dir",
            str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"), "--bench_dir", str(tmp_path / "data"),
            "--bench_name", "mini", "--judge_file", str(judge_file), "--judge_cache", "none",
            "--judge_model_name", f"hf:{trio['base']}", "--merge_method", "dare_ties", "--dry_run"]
    run_cli(lambda a: run_pipeline(MT_BENCH_MOE_2, a), argv)
    plan = json.loads(capsys.readouterr().out)
    # the default (profile of 2 knots for 2 layers, scale first), per vector: expert 1 (the MoE base) a scale, 2 knots,
    # embed_tokens, norm and lm_head; expert 2 (its MLP layers only) a scale and 2 knots
    assert plan["weights_per_expert"] == {"expert1": 12, "expert2": 6} and plan["weights"] == 18
    assert plan["optimize_mode"] == "profile" and plan["scale_search"] == "on"
    assert plan["task_vectors"] == 2 and plan["merge_method"] == "dare_ties" and plan["densities"] == 2


def test_two_vectors_under_dare_ties_validate_and_plan_without_loading_weights(trio, tmp_path, capsys):
    run_cli(lambda a: run_pipeline(JGLUE, a), args(trio, tmp_path, f"{trio['tuned']},{trio['target']}", "--merge_method", "dare_ties",
                             "--dare_seed", "5", "--density_per_group", "--dry_run"))
    plan = json.loads(capsys.readouterr().out)
    assert plan["task_vectors"] == 2 and plan["merge_method"] == "dare_ties"
    assert plan["densities"] == 2 * 5  # one per vector and group: embed_tokens, 2 layers, norm, lm_head
    assert plan["weights"] == 2 * (1 + 2 + 3)  # per vector: its scale, 2 knots, embed_tokens, norm, lm_head
