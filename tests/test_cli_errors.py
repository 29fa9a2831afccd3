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


# ------------------------------------------------------------------------- inputs that used to slip through

@pytest.mark.parametrize("dry_run", [[], ["--dry_run"]], ids=["run", "dry_run"])
@pytest.mark.parametrize("url, fragment", [("sqlite:///", "names no database file"),
                                           ("sqlite:///:memory:", "in-memory database"),
                                           ("sqlite://", "in-memory database")])
def test_a_sqlite_storage_that_names_no_file_is_refused_before_the_models_load(trio, tmp_path, capsys, url,
                                                                                fragment, dry_run):
    fails_with(base_args(trio, tmp_path) + ["--storage", url, *dry_run], capsys, "--storage", repr(url), fragment,
               "e.g. sqlite:///runs/my_study.db")


def test_a_storage_path_that_is_a_directory_is_refused(trio, tmp_path, capsys):
    fails_with(base_args(trio, tmp_path) + ["--storage", f"sqlite:///{tmp_path}"], capsys, "--storage",
               "is a directory", str(tmp_path / "study.db"))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_storage_file_in_a_directory_that_takes_no_files_names_the_file_and_the_directory(trio, tmp_path, capsys):
    err = fails_with(base_args(trio, tmp_path) + ["--storage", "/proc/j.log"], capsys, "--storage",
                     "'/proc/j.log': the study file cannot be created in '/proc'")
    assert "No such file or directory" not in err and "not a writable directory" not in err, err


@pytest.mark.parametrize("extra, flag, fragments", [
    (["--item_subset_after", "4"], "--item_subset_after", ("(4) does nothing without --item_subset",)),
    (["--item_subset", "0.3", "--item_subset_after", "1000", "--n_trials", "2"], "--item_subset_after",
     ("never be used", "after 1000 trials", "--n_trials is 2")),
    (["--item_subset", "0.3", "--n_trials", "6"], "--item_subset", ("never be used", "after 6 trials")),
    (["--optimize_mode", "layer", "--profile_knots", "2"], "--profile_knots",
     ("does nothing with --optimize_mode layer",)),
    (["--density_min", "0.2"], "--density_min", ("(0.2) does nothing with task_arithmetic", "--merge_method ties")),
    (["--density_max", "0.5"], "--density_max", ("(0.5) does nothing with task_arithmetic",)),
], ids=["subset_after without subset", "subset after every trial", "default subset_after and few trials",
        "knots without profile", "density_min with task_arithmetic", "density_max with task_arithmetic"])
def test_a_flag_that_would_do_nothing_is_refused_like_pruner_without_prune(trio, tmp_path, capsys, extra, flag,
                                                                          fragments):
    fails_with(base_args(trio, tmp_path) + extra, capsys, flag, *fragments)


@pytest.mark.parametrize("extra", [
    ["--profile_knots", "2"],  # --optimize_mode auto resolves to profile, which reads the knots
    ["--optimize_mode", "profile", "--profile_knots", "2"],
    ["--merge_method", "ties", "--density_min", "0.2", "--density_max", "0.5"],
    ["--item_subset", "0.3", "--item_subset_after", "4", "--n_trials", "5"],
], ids=["knots under auto", "knots under profile", "densities under ties", "subset that starts"])
def test_the_same_flags_where_they_do_something_are_accepted(trio, tmp_path, capsys, extra):
    run_cli(run_jglue, base_args(trio, tmp_path) + extra + ["--dry_run"])
    assert '"study"' in capsys.readouterr().out


def test_vllm_memory_share_with_the_hf_backend_is_refused(trio, tmp_path, capsys, mini_bench_args, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    mt_fails_with(base_args(trio, tmp_path) + mini_bench_args + ["--vllm_gpu_memory_utilization", "0.6"], capsys,
                  "--vllm_gpu_memory_utilization", "(0.6)", "--generation_backend hf", "--generation_backend vllm")


@pytest.mark.parametrize("value, suggested", [("0.0001", "0.001"), ("0.12345", "0.123"), ("0.99999", "1.0")])
def test_an_off_grid_density_suggests_a_density_that_is_accepted(trio, tmp_path, capsys, value, suggested):
    ties = ["--merge_method", "ties"]
    err = fails_with(base_args(trio, tmp_path) + ties + ["--density_min", value], capsys, "--density_min",
                     f"e.g. {suggested}")
    assert err.endswith(f"e.g. {suggested}"), err
    run_cli(run_jglue, base_args(trio, tmp_path) + ties + ["--density_min", suggested, "--dry_run"])
    assert '"study"' in capsys.readouterr().out


@pytest.mark.parametrize("extra, flag, fragments", [
    (["--dtype", "float16", "--weight_max", "2e7"], "--weight_max",
     ("(2e+07) is beyond what --dtype float16 holds", "|weight| must be at most", "65504", "--dtype bfloat16 or float32")),
    (["--dtype", "float16", "--weight_min", "-70000"], "--weight_min", ("(-70000)", "65504")),
    (["--dtype", "bfloat16", "--weight_max", "1e39"], "--weight_max", ("bfloat16", "3.38953e+38")),
    (["--dtype", "float32", "--weight_max", "1e39"], "--weight_max", ("float32", "3.40282e+38")),
], ids=["float16 max", "float16 min", "bfloat16", "float32"])
def test_a_weight_range_the_dtype_cannot_hold_is_refused_before_loading(trio, tmp_path, capsys, extra, flag, fragments):
    fails_with(base_args(trio, tmp_path) + extra, capsys, flag, *fragments)


@pytest.mark.parametrize("extra", [["--dtype", "float16", "--weight_min", "-65504", "--weight_max", "65504"],
                                   ["--dtype", "bfloat16", "--weight_max", "2e7"]], ids=["float16", "bfloat16"])
def test_a_weight_range_the_dtype_holds_is_accepted(trio, tmp_path, capsys, extra):
    run_cli(run_jglue, base_args(trio, tmp_path) + extra + ["--dry_run"])
    assert '"study"' in capsys.readouterr().out


def launch_jglue(trio, tmp_path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "merge_task_vector_jglue.py"), *base_args(trio, tmp_path),
                           *extra], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("extra, flag", [
    (["--storage", "sqlite:///:memory:"], "--storage"),
    (["--finalize"], "--finalize"),
    (["{full output_dir}"], "--output_dir"),
], ids=["storage", "finalize without a study", "output_dir"])
def test_under_the_default_mode_an_error_found_late_is_still_the_only_line(trio, tmp_path, extra, flag):
    """--optimize_mode auto logs which mode it chose, but only once every input passed."""
    if extra == ["{full output_dir}"]:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "model.safetensors").write_text("old")
        extra = []
    done = launch_jglue(trio, tmp_path, *extra)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: "), done.stderr


def test_under_the_default_mode_a_valid_command_logs_the_chosen_mode(trio, tmp_path):
    done = launch_jglue(trio, tmp_path, "--dry_run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--optimize_mode auto: profile" in done.stderr, done.stderr
