"""Every bad input gets one line naming the flag, exit code 2, and no model is loaded."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from task_vector_opt import engine
from task_vector_opt.cli.flags import run_cli
from task_vector_opt.cli.pipelines import JGLUE, MT_BENCH, run_pipeline
from cli_checks import expect_usage_error, refuse_model_loads
from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama")


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    refuse_model_loads(monkeypatch, engine)


def base_args(trio, tmp_path):
    return ["--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
            str(trio["tuned"]), "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run")]


def run_jglue(argv):
    run_pipeline(JGLUE, argv)


def fails_with(argv, capsys, flag, *fragments):
    return expect_usage_error(run_jglue, argv, capsys, flag, *fragments)


def test_weight_min_not_below_weight_max(trio, tmp_path, capsys):
    fails_with(base_args(trio, tmp_path) + ["--weight_min", "2", "--weight_max", "1"], capsys, "--weight_min",
               "2.0", "1.0")


def test_weight_min_equal_to_weight_max(trio, tmp_path, capsys):
    fails_with(base_args(trio, tmp_path) + ["--weight_min", "1", "--weight_max", "1"], capsys, "--weight_max")


def test_n_trials_below_one(trio, tmp_path, capsys):
    fails_with(base_args(trio, tmp_path) + ["--n_trials", "0"], capsys, "--n_trials", "at least 1")


def test_unknown_optimize_mode(trio, tmp_path, capsys):
    fails_with(base_args(trio, tmp_path) + ["--optimize_mode", "layers"], capsys, "--optimize_mode", "layers")


def test_unknown_sampler(trio, tmp_path, capsys):
    fails_with(base_args(trio, tmp_path) + ["--optuna_sampler", "random-forest"], capsys, "--optuna_sampler",
               "TPE, CMA-ES, random, GP")


def test_sampler_names_are_case_insensitive(trio, tmp_path, capsys):
    run_cli(run_jglue, base_args(trio, tmp_path) + ["--optuna_sampler", "cmaes", "--dry_run"])
    assert '"sampler": "CMA-ES"' in capsys.readouterr().out


def test_jglue_limit_count_differs_from_task_count(trio, tmp_path, capsys):
    fails_with(base_args(trio, tmp_path) + ["--jglue_tasks", "jnli-1.3-0.2,marc_ja-1.1-0.2", "--jglue_limit",
                                            "10,20,30"], capsys, "--jglue_limit")


def test_unknown_task_lists_close_matches(trio, tmp_path, capsys):
    fails_with(base_args(trio, tmp_path) + ["--jglue_tasks", "jcommonsenseq-1.1-0.3"], capsys, "--jglue_tasks",
               "jcommonsenseqa")


@pytest.mark.parametrize("flag", ["--target_model", "--base_model", "--tuned_model"])
@pytest.mark.parametrize("value", ["./no/such/model", "not a hub id", "a/b/c"])
def test_model_that_is_neither_a_weights_directory_nor_a_hub_id(trio, tmp_path, capsys, flag, value):
    argv = base_args(trio, tmp_path)
    argv[argv.index(flag) + 1] = value
    fails_with(argv, capsys, flag, value)


def test_model_directory_without_weights(trio, tmp_path, capsys):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    argv = base_args(trio, tmp_path)
    argv[argv.index("--base_model") + 1] = str(empty)
    fails_with(argv, capsys, "--base_model", "safetensors")


def test_pickle_only_model_is_refused_without_allow_pickle(trio, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    argv = base_args(trio, tmp_path)
    argv[argv.index("--tuned_model") + 1] = str(pickled)
    fails_with(argv, capsys, "--tuned_model", "--allow_pickle")


def test_cache_dir_not_writable(trio, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    fails_with(base_args(trio, tmp_path) + ["--cache_dir", str(blocker / "cache")], capsys, "--cache_dir",
               "not a writable directory")


def test_output_dir_exists_and_is_not_empty(trio, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    fails_with(base_args(trio, tmp_path), capsys, "--output_dir", "--overwrite_output_dir")


@pytest.mark.parametrize("url", ["postgresql://user:secret@127.0.0.1:9/optuna", "nosuchdb://x"])
def test_storage_that_optuna_cannot_open(trio, tmp_path, capsys, url):
    err = fails_with(base_args(trio, tmp_path) + ["--storage", url, "--n_trials", "1"], capsys, "--storage")
    assert "secret" not in err  # a password in the URL is never printed


def test_unknown_flag_is_one_line(trio, tmp_path, capsys):
    fails_with(base_args(trio, tmp_path) + ["--n_trails", "3"], capsys, "--n_trails")


def test_the_launcher_reports_bad_input_quickly_with_exit_code_2(trio, tmp_path):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "merge_task_vector_jglue.py"), *base_args(trio, tmp_path),
                           "--weight_min", "3"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --weight_min: (3.0) must be lower than --weight_max (2.0)"]
    assert time.perf_counter() - started < 60


def mt_fails_with(argv, capsys, flag, *fragments):

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda a: run_pipeline(MT_BENCH, a), argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def mini_bench_args(tmp_path):
    from mini_bench import write_mini_bench

    judge_file = write_mini_bench(tmp_path / "data")
    return ["--bench_dir", str(tmp_path / "data"), "--bench_name", "mini", "--judge_file", str(judge_file),
            "--judge_cache", "none"]


def test_mt_bench_parallel_below_one(trio, tmp_path, capsys, mini_bench_args, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    mt_fails_with(base_args(trio, tmp_path) + mini_bench_args + ["--parallel", "0"], capsys, "--parallel")


def test_mt_bench_api_judge_without_its_key(trio, tmp_path, capsys, mini_bench_args, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    mt_fails_with(base_args(trio, tmp_path) + mini_bench_args + ["--judge_model_name", "gpt-4o"], capsys,
                  "--judge_model_name", "OPENAI_API_KEY")


def test_mt_bench_unknown_judge(trio, tmp_path, capsys, mini_bench_args):
    mt_fails_with(base_args(trio, tmp_path) + mini_bench_args + ["--judge_model_name", "my-judge"], capsys,
                  "--judge_model_name", "my-judge")


def test_mt_bench_missing_bench(trio, tmp_path, capsys, mini_bench_args, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    mt_fails_with(base_args(trio, tmp_path) + mini_bench_args + ["--bench_name", "nosuchbench"], capsys,
                  "--bench_name", "nosuchbench")


def test_mt_bench_malformed_question_line_names_file_and_line(trio, tmp_path, capsys, mini_bench_args, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    questions = tmp_path / "data" / "mini" / "question.jsonl"
    questions.write_text(questions.read_text() + "{not json\n", encoding="utf-8")
    mt_fails_with(base_args(trio, tmp_path) + mini_bench_args, capsys, "question.jsonl", ":5")
