"""Each bad MoE input gets one line naming the flag, exit code 2, and no model is loaded."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from task_vector_opt import engine
from task_vector_opt.merging.moe import workspace as moe_workspace
from task_vector_opt.cli.flags import run_cli
from task_vector_opt.cli.pipelines import MT_BENCH_MOE_2, MT_BENCH_MOE_4, run_pipeline
from cli_checks import expect_usage_error, refuse_model_loads
from mini_bench import write_mini_bench
from tiny_models import make_model, make_trio, save

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Config files are all validation reads; tiny weights keep the directories well-formed."""
    root = tmp_path_factory.mktemp("moe_cli")
    trio = make_trio(root, "llama")
    return {**trio, "target2": save(make_model("llama", seed=3), None, root / "target2"),
            "qwen": save(make_model("qwen2", seed=3), None, root / "qwen"),
            "wide": save(make_model("llama", seed=3, hidden=64), None, root / "wide")}


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    refuse_model_loads(monkeypatch, engine, moe_workspace)


def args(models, tmp_path, *targets):
    judge_file = write_mini_bench(tmp_path / "data")
    flags = []
    for index, target in enumerate(targets, start=1):
        flags += [f"--target_model_{index}", str(target)]
    return flags + ["--base_model", str(models["base"]), "--tuned_model", str(models["tuned"]),
                    "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"),
                    "--bench_dir", str(tmp_path / "data"), "--bench_name", "mini", "--judge_file", str(judge_file),
                    "--judge_cache", "none", "--judge_model_name", f"hf:{models['base']}"]


def write_yaml(tmp_path, payload) -> str:
    path = tmp_path / "moe.yaml"
    path.write_text(yaml.safe_dump(payload, allow_unicode=True), encoding="utf-8")
    return str(path)


def fails_with(argv, capsys, flag, *fragments, pipeline=MT_BENCH_MOE_2):
    return expect_usage_error(lambda a: run_pipeline(pipeline, a), argv, capsys, flag, *fragments)


def test_fewer_than_two_experts(models, tmp_path, capsys):
    fails_with(args(models, tmp_path, models["target"]), capsys, "--target_model_2", "at least 2 experts", "got 1")


def test_a_gap_in_the_target_numbers(models, tmp_path, capsys):
    argv = args(models, tmp_path, models["target"], models["target2"])
    argv[argv.index("--target_model_2")] = "--target_model_3"
    fails_with(argv, capsys, "--target_model_3", "--target_model_2", pipeline=MT_BENCH_MOE_4)


def test_experts_of_different_architectures(models, tmp_path, capsys):
    fails_with(args(models, tmp_path, models["target"], models["qwen"]), capsys, "--target_model_2", "qwen2",
               "Llama or Mistral")


def test_experts_of_different_shapes(models, tmp_path, capsys):
    fails_with(args(models, tmp_path, models["target"], models["wide"]), capsys, "--target_model_2",
               "hidden_size=64", "32")


def test_config_whose_expert_count_differs_from_the_targets(models, tmp_path, capsys):
    config = write_yaml(tmp_path, {"base_model": "target_model_1", "gate_mode": "random", "experts": [
        {"source_model": "target_model_1"}, {"source_model": "target_model_2"}, {"source_model": "x"}]})
    fails_with(args(models, tmp_path, models["target"], models["target2"]) + ["--moe_config", config], capsys,
               "--moe_config", "lists 3 experts", "2 targets")


def test_hidden_gate_without_positive_prompts(models, tmp_path, capsys):
    config = write_yaml(tmp_path, {"base_model": "target_model_1", "gate_mode": "hidden", "experts": [
        {"source_model": "target_model_1", "positive_prompts": ["数学の問題"]},
        {"source_model": "target_model_2"}]})
    fails_with(args(models, tmp_path, models["target"], models["target2"]) + ["--moe_config", config], capsys,
               "--gate_mode", "'hidden'", "expert 2")


def test_cheap_embed_gate_without_any_config(models, tmp_path, capsys):
    fails_with(args(models, tmp_path, models["target"], models["target2"]) + ["--gate_mode", "cheap_embed"], capsys,
               "--gate_mode", "positive_prompts", "no --moe_config")


def test_identical_prompts_for_all_experts(models, tmp_path, capsys):
    same = {"positive_prompts": ["こんにちは"], "negative_prompts": ["hello"]}
    config = write_yaml(tmp_path, {"base_model": "target_model_1", "gate_mode": "hidden", "experts": [
        {"source_model": "target_model_1", **same}, {"source_model": "target_model_2", **same}]})
    fails_with(args(models, tmp_path, models["target"], models["target2"]) + ["--moe_config", config], capsys,
               "--moe_config", "identical", "could not tell them apart")


def test_config_naming_a_model_that_is_not_a_target(models, tmp_path, capsys):
    config = write_yaml(tmp_path, {"base_model": "target_model_1", "gate_mode": "random", "experts": [
        {"source_model": "target_model_1"}, {"source_model": "someone/other-model"}]})
    fails_with(args(models, tmp_path, models["target"], models["target2"]) + ["--moe_config", config], capsys,
               "--moe_config", "someone/other-model")


def test_experts_per_token_above_the_expert_count(models, tmp_path, capsys):
    fails_with(args(models, tmp_path, models["target"], models["target2"]) + ["--experts_per_token", "3"], capsys,
               "--experts_per_token", "(2)")


@pytest.mark.parametrize("source", ["flag", "config"])
def test_zero_experts_per_token_is_refused_not_turned_into_the_default(models, tmp_path, capsys, source):
    argv = args(models, tmp_path, models["target"], models["target2"])
    if source == "flag":
        fails_with(argv + ["--experts_per_token", "0"], capsys, "--experts_per_token", "between 1 and", "got 0")
    else:
        config = write_yaml(tmp_path, {"gate_mode": "random", "experts_per_token": 0, "experts": [
            {"source_model": "target_model_1"}, {"source_model": "target_model_2"}]})
        fails_with(argv + ["--moe_config", config], capsys, "--moe_config", "between 1 and", "got 0")


def test_expert_output_dir_not_empty(models, tmp_path, capsys):
    (tmp_path / "out-2").mkdir()
    (tmp_path / "out-2" / "file").write_text("x")
    fails_with(args(models, tmp_path, models["target"], models["target2"]), capsys, "--output_dir", "out-2")


def test_existing_mergekit_config_is_accepted_and_planned(models, tmp_path, capsys):
    """A config written for mergekit-moe (its own source paths, dtype) maps onto the targets in order."""
    config = write_yaml(tmp_path, {"base_model": "./chatvector-1", "gate_mode": "cheap_embed", "dtype": "float16",
                                   "experts_per_token": 1, "experts": [
                                       {"source_model": "./chatvector-1", "positive_prompts": ["数学"]},
                                       {"source_model": "./chatvector-2", "positive_prompts": ["小説"]}]})
    run_cli(lambda a: run_pipeline(MT_BENCH_MOE_2, a),
            args(models, tmp_path, models["target"], models["target2"]) + ["--moe_config", config, "--dry_run"])
    out = capsys.readouterr().out
    plan = __import__("json").loads(out)
    assert plan["gate_mode"] == "cheap_embed" and plan["experts_per_token"] == 1 and plan["experts"] == 2
    assert plan["dtype"] == "float16"  # the config's dtype when --dtype is not given
    # the default: a scale per expert, then a profile (2 knots for 2 layers); expert 1, the MoE base, also has
    # embed_tokens, norm and lm_head
    assert plan["weights_per_expert"] == {"expert1": 6, "expert2": 3}


def plan_of(argv, capsys):
    run_cli(lambda a: run_pipeline(MT_BENCH_MOE_2, a), argv + ["--dry_run"])
    return __import__("json").loads(capsys.readouterr().out)


def test_rerunning_with_save_moe_resumes_the_same_study_and_another_gate_mode_does_not(models, tmp_path, capsys):
    argv = args(models, tmp_path, models["target"], models["target2"])
    study = plan_of(argv, capsys)["study"]
    assert plan_of(argv + ["--save_moe"], capsys)["study"] == study
    assert plan_of(argv + ["--gate_seed", "1"], capsys)["study"] != study
    assert plan_of(argv + ["--experts_per_token", "1"], capsys)["study"] != study


def test_mistyped_target_path_is_reported_before_any_config_is_fetched(models, tmp_path, capsys):
    fails_with(args(models, tmp_path, models["target"], tmp_path / "no" / "such-model"), capsys, "--target_model_2",
               "such-model")


@pytest.mark.parametrize("payload,fragments", [
    ({"gate_mode": "random", "experts": [{"source_model": "target_model_1"}, {"source_model": "target_model_2"}],
      "moe_layers": 2}, ("unknown key(s) moe_layers", "mergekit-moe keys are")),
    ({"experts": [{"source_model": "target_model_1"}, {"positive_prompts": ["x"]}]}, ("expert 2 needs a source_model",)),
    ({"experts": [{"source_model": "target_model_1", "prompt": "x"}, {"source_model": "target_model_2"}]},
     ("expert 1 has unknown key(s) prompt",)),
    ({"experts": [{"source_model": "target_model_1", "positive_prompts": "math"},
                  {"source_model": "target_model_2"}]}, ("expert 1 positive_prompts must be a list of strings",)),
    ({"experts": [{"source_model": "target_model_1", "noise_scale": 0.1}, {"source_model": "target_model_2"}]},
     ("expert 1 sets noise_scale",)),
    ({"experts": []}, ("non-empty 'experts' list",)),
    ({"experts_per_token": "two", "experts": [{"source_model": "target_model_1"}, {"source_model": "target_model_2"}]},
     ("experts_per_token",)),
])
def test_config_breaking_the_mergekit_moe_schema_is_one_line(models, tmp_path, capsys, payload, fragments):
    config = write_yaml(tmp_path, payload)
    fails_with(args(models, tmp_path, models["target"], models["target2"]) + ["--moe_config", config], capsys,
               "--moe_config", *fragments)


def test_the_mergekit_moe_yaml_written_beside_a_saved_moe_reads_back_through_the_same_schema(tmp_path):
    from task_vector_opt.merging.moe.config import ExpertPrompts, MoESettings, _read_yaml
    from task_vector_opt.merging.moe.save import mergekit_yaml

    settings = MoESettings(n_experts=2, base_index=1, gate_mode="hidden", experts_per_token=1, gate_seed=0,
                           prompts=[ExpertPrompts(["数学"], ["小説"]), ExpertPrompts(["小説"])], save_moe=True)
    path = tmp_path / "mergekit_moe.yaml"
    path.write_text(mergekit_yaml(settings, [tmp_path / "out-1", tmp_path / "out-2"], "float16"), encoding="utf-8")
    config = _read_yaml(str(path))
    assert config.base_model == str(tmp_path / "out-2") and config.gate_mode == "hidden" and config.dtype == "float16"
    assert [(e.positive_prompts, e.negative_prompts) for e in config.experts] == [(["数学"], ["小説"]), (["小説"], None)]


def test_the_config_files_dtype_goes_into_the_run_config_and_the_parsed_flags_stay_as_given(models, tmp_path):
    from task_vector_opt.cli.flags import parse_namespace
    from task_vector_opt.cli.validation import validate

    config_file = write_yaml(tmp_path, {"gate_mode": "random", "dtype": "fp16", "experts": [
        {"source_model": "target_model_1"}, {"source_model": "target_model_2"}]})
    argv = args(models, tmp_path, models["target"], models["target2"]) + ["--moe_config", config_file]
    parsed = parse_namespace(MT_BENCH_MOE_2.command_line, argv)
    assert validate(MT_BENCH_MOE_2, parsed).dtype == "float16" and parsed.dtype is None
    given = parse_namespace(MT_BENCH_MOE_2.command_line, argv + ["--dtype", "float32"])
    assert validate(MT_BENCH_MOE_2, given).dtype == "float32"  # --dtype wins over the file
    plain = parse_namespace(MT_BENCH_MOE_2.command_line, args(models, tmp_path, models["target"], models["target2"]))
    assert validate(MT_BENCH_MOE_2, plain).dtype == "bfloat16"  # neither: the --dtype flag's own default


def test_profile_mode_gives_each_expert_its_own_knots(models, tmp_path, capsys):
    argv = args(models, tmp_path, models["target"], models["target2"]) + ["--optimize_mode", "profile",
                                                                         "--profile_knots", "2"]
    plan = plan_of(argv, capsys)  # a named mode: no scale stage unless --scale_search on
    assert plan["optimize_mode"] == "profile" and plan["scale_search"] == "off"
    assert plan["weights_per_expert"] == {"expert1": 5, "expert2": 2}  # knots (+ embed_tokens, norm, lm_head)
    plan = plan_of(argv + ["--scale_search", "on"], capsys)
    assert plan["weights_per_expert"] == {"expert1": 6, "expert2": 3}  # + each expert's scale


def test_pruner_without_prune_is_refused_for_mt_bench_too(models, tmp_path, capsys):
    argv = args(models, tmp_path, models["target"], models["target2"]) + ["--pruner", "hyperband"]
    fails_with(argv, capsys, "--pruner", "without --prune")


SHIFT_JIS_PREFIX = "gate_mode: hidden\nexperts:\n  - source_model: target_model_1\n    positive_prompts: ['"


def write_encoded(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def shift_jis_config(tmp_path) -> tuple[str, int]:
    """The prompts as a Japanese Windows editor saves them (Shift-JIS); the first Japanese byte's offset."""
    text = (SHIFT_JIS_PREFIX + "日本語で答えてください。']\n  - source_model: target_model_2\n"
            "    positive_prompts: ['次の計算をしてください。']\n")
    return write_encoded(tmp_path, "moe_sjis.yaml", text.encode("shift_jis")), len(SHIFT_JIS_PREFIX)


@pytest.mark.parametrize("kind", ["Shift-JIS", "binary"])
def test_a_config_that_is_not_utf8_is_one_line_naming_the_file_and_the_byte(models, tmp_path, capsys, kind):
    if kind == "Shift-JIS":
        path, byte = shift_jis_config(tmp_path)
    else:  # e.g. a model file given by mistake: a zip's header, then bytes UTF-8 cannot start with
        path, byte = write_encoded(tmp_path, "moe.bin", b"PK\x03\x04\x14\x00\xff\xfe\x00\x01"), 6
    fails_with(args(models, tmp_path, models["target"], models["target2"]) + ["--moe_config", path], capsys,
               "--moe_config", repr(path), "not UTF-8 text", f"at byte {byte})", "save the file as UTF-8")


def test_a_utf8_config_with_a_byte_order_mark_is_read(models, tmp_path, capsys):
    text = ("gate_mode: cheap_embed\nexperts_per_token: 1\nexperts:\n  - source_model: target_model_1\n"
            "    positive_prompts: ['日本語で答えてください。']\n  - source_model: target_model_2\n"
            "    positive_prompts: ['次の計算をしてください。']\n")
    path = write_encoded(tmp_path, "moe_bom.yaml", text.encode("utf-8-sig"))
    plan = plan_of(args(models, tmp_path, models["target"], models["target2"]) + ["--moe_config", path], capsys)
    assert plan["gate_mode"] == "cheap_embed" and plan["experts_per_token"] == 1


@pytest.mark.e2e
def test_a_shift_jis_config_through_the_launcher_is_one_line_and_exit_2_before_anything_is_written(
        models, tmp_path):
    path, byte = shift_jis_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "run_merge_mt_bench_moe_2_experts.sh"),
                           *args(models, tmp_path, models["target"], models["target2"]),
                           "--cache_dir", str(tmp_path / "hf_cache"), "--moe_config", path],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err == (f"error: --moe_config: {path!r}: not UTF-8 text (invalid start byte at byte {byte}); save the "
                   "file as UTF-8")
    assert not (tmp_path / "run").exists()  # no study was opened
