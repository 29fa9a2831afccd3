"""The default study name depends only on the inputs that change the merge or its score: a flag that does not count
(batch size, parallelism, timeouts, caches, device, storage, directories, logging, sharing) keeps the study, so a
rerun resumes; a flag that counts starts another study, and the run then names what differs from the old one."""
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from task_vector_opt.cli.flags import run_cli
from task_vector_opt.cli.flags import parse_namespace
from task_vector_opt.cli.pipelines import JGLUE, MT_BENCH_MOE_2, run_pipeline
from task_vector_opt.cli.validation import validate
from cli_checks import jglue_in_process, refuse_every_model_load
from mini_bench import write_mini_bench
from tiny_models import make_trio_and_second_target

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"




@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_trio_and_second_target(tmp_path_factory.mktemp("identity_models"))


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):  # the real runs below load their models in a subprocess
    refuse_every_model_load(monkeypatch)


def filled(argv: list[str], tmp_path: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in argv]


def jglue_argv(models, tmp_path: Path) -> list[str]:
    return ["--target_model", str(models["target"]), "--base_model", str(models["base"]), "--tuned_model",
            str(models["tuned"]), "--dtype", "float32", "--task_search_path", str(DEMO_TASKS), "--jglue_tasks",
            "demo_skill", "--jglue_limit", "12", "--output_dir", str(tmp_path / "out"), "--run_dir",
            str(tmp_path / "run")]


def moe_argv(models, tmp_path: Path) -> list[str]:
    judge_file = write_mini_bench(tmp_path / "data")
    return ["--target_model_1", str(models["target"]), "--target_model_2", str(models["target2"]),
            "--base_model", str(models["base"]), "--tuned_model", str(models["tuned"]),
            "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"),
            "--bench_dir", str(tmp_path / "data"), "--bench_name", "mini", "--judge_file", str(judge_file),
            "--judge_cache", "none", "--judge_model_name", f"hf:{models['base']}"]


def study_of(entry, argv: list[str], capsys) -> str:
    """The study a run would use, from the --dry_run plan."""
    run_cli(entry, argv + ["--dry_run"])
    return json.loads(capsys.readouterr().out)["study"]


def moe_entry(argv):
    run_pipeline(MT_BENCH_MOE_2, argv)


# Each flag that does not change the merge or its score, with a value other than its default.
JGLUE_FLAGS_OUTSIDE = {
    "--batch_size": ["--batch_size", "4"],
    "--batch_size auto": ["--batch_size", "auto"],
    "--device": ["--device", "cpu"],
    "--vector_placement": ["--vector_placement", "cpu"],
    "--cache_dir": ["--cache_dir", "{tmp}/hf_cache"],
    "--storage": ["--storage", "sqlite:///{tmp}/elsewhere/study.db"],
    "--storage journal": ["--storage", "{tmp}/study.log"],
    "--run_dir": ["--run_dir", "{tmp}/other_run"],
    "--output_dir": ["--output_dir", "{tmp}/other_out"],
    "--overwrite_output_dir": ["--overwrite_output_dir"],
    "--log_level": ["--log_level", "ERROR"],
    "--heartbeat_interval": ["--heartbeat_interval", "5"],
    "--n_trials": ["--n_trials", "100"],
    "--holdout_top_k": ["--holdout_top_k", "3"],
    "--no_baseline_trials": ["--no_baseline_trials"],
    "--save_on_interrupt": ["--save_on_interrupt"],
    "--search_only": ["--search_only"],
    "--trust_remote_code": ["--trust_remote_code"],
    "--allow_pickle": ["--allow_pickle"],
    "--wandb": ["--wandb"],
    "--push_to_hub": ["--push_to_hub", "someone/merged", "--hub_private"],
}

# Each flag that does change the merge or its score.
JGLUE_FLAGS_INSIDE = {
    "--optuna_seed": ["--optuna_seed", "7"],
    "--weight_min": ["--weight_min", "-1"],
    "--weight_max": ["--weight_max", "3"],
    "--dtype": ["--dtype", "bfloat16"],
    "--optimize_mode": ["--optimize_mode", "all"],
    "--optuna_sampler": ["--optuna_sampler", "TPE"],
    "--skip_embed": ["--skip_embed"],
    "--jglue_limit": ["--jglue_limit", "10"],
    "--jglue_num_fewshot": ["--jglue_num_fewshot", "1"],
    "--jglue_holdout_limit": ["--jglue_holdout_limit", "4"],
    "--item_subset": ["--item_subset", "0.3"],
    "--tuned_model": ["--tuned_model", "{target2}"],
}


@pytest.fixture(scope="module")
def jglue_study(models, tmp_path_factory):
    """The study name of the plain JGLUE command (computed once)."""
    plan = io.StringIO()
    with contextlib.redirect_stdout(plan):  # capsys is per test
        run_cli(jglue_in_process, jglue_argv(models, tmp_path_factory.mktemp("jglue_base")) + ["--dry_run"])
    return json.loads(plan.getvalue())["study"]


@pytest.mark.parametrize("flag", JGLUE_FLAGS_OUTSIDE, ids=list(JGLUE_FLAGS_OUTSIDE))
def test_a_flag_outside_the_identity_keeps_the_jglue_study(models, tmp_path, capsys, monkeypatch, jglue_study, flag):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # --push_to_hub needs one; nothing is uploaded
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    changed = jglue_argv(models, tmp_path) + filled(JGLUE_FLAGS_OUTSIDE[flag], tmp_path)
    assert study_of(jglue_in_process, changed, capsys) == jglue_study


@pytest.mark.parametrize("flag", JGLUE_FLAGS_INSIDE, ids=list(JGLUE_FLAGS_INSIDE))
def test_a_flag_of_the_identity_starts_another_jglue_study(models, tmp_path, capsys, jglue_study, flag):
    change = [a.replace("{target2}", str(models["target2"])) for a in JGLUE_FLAGS_INSIDE[flag]]
    assert study_of(jglue_in_process, jglue_argv(models, tmp_path) + change, capsys) != jglue_study


def test_finalize_finds_the_study_the_search_made(models, tmp_path, capsys, jglue_study):
    # --finalize refuses a storage without this study: the same name is what lets it find the search's study.
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(study_name=jglue_study, storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    argv = jglue_argv(models, tmp_path) + ["--storage", storage, "--finalize", "--batch_size", "2"]
    assert study_of(jglue_in_process, argv, capsys) == jglue_study


MOE_FLAGS_OUTSIDE = {
    "--parallel": ["--parallel", "8"],
    "--judge_timeout": ["--judge_timeout", "5"],
    "--judge_max_retries": ["--judge_max_retries", "1"],
    "--judge_cache": ["--judge_cache", "{tmp}/judge_cache.sqlite"],
    "--gen_batch_size": ["--gen_batch_size", "2"],
    "--on_judge_failure": ["--on_judge_failure", "stop"],
    "--min_judged_fraction": ["--min_judged_fraction", "0.9"],
    "--chunk_size without --prune": ["--chunk_size", "2"],
    "--save_moe": ["--save_moe"],
}

MOE_FLAGS_INSIDE = {
    "--max_new_tokens": ["--max_new_tokens", "64"],
    "--judge_rating_mode": ["--judge_rating_mode", "logprob"],
    "--judge_model_name": ["--judge_model_name", "hf:{target2}"],
    "--prune": ["--prune"],
    "--gate_seed": ["--gate_seed", "7"],
    "--experts_per_token": ["--experts_per_token", "1"],
}


@pytest.mark.parametrize("flag", MOE_FLAGS_OUTSIDE, ids=list(MOE_FLAGS_OUTSIDE))
def test_a_judge_generation_or_moe_flag_outside_the_identity_keeps_the_study(models, tmp_path, capsys, flag):
    argv = moe_argv(models, tmp_path)
    assert study_of(moe_entry, argv + filled(MOE_FLAGS_OUTSIDE[flag], tmp_path), capsys) == \
        study_of(moe_entry, argv, capsys)


@pytest.mark.parametrize("flag", MOE_FLAGS_INSIDE, ids=list(MOE_FLAGS_INSIDE))
def test_a_judge_generation_or_moe_flag_of_the_identity_starts_another_study(models, tmp_path, capsys, flag):
    argv = moe_argv(models, tmp_path)
    change = [a.replace("{target2}", str(models["target2"])) for a in MOE_FLAGS_INSIDE[flag]]
    assert study_of(moe_entry, argv + change, capsys) != study_of(moe_entry, argv, capsys)


def test_chunk_size_counts_only_when_the_pruner_reads_the_running_scores(models, tmp_path, capsys):
    argv = moe_argv(models, tmp_path) + ["--prune"]
    assert study_of(moe_entry, argv + ["--chunk_size", "2"], capsys) != study_of(moe_entry, argv, capsys)


def test_gate_seed_counts_only_for_random_routers_and_prompts_only_for_routers_that_read_them(
        models, tmp_path, capsys):
    def config(name: str, gate_mode: str, second_prompt: str) -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump({"gate_mode": gate_mode, "experts": [
            {"source_model": "target_model_1", "positive_prompts": ["数学"]},
            {"source_model": "target_model_2", "positive_prompts": [second_prompt]}]}, allow_unicode=True))
        return str(path)

    argv = moe_argv(models, tmp_path)
    hidden = argv + ["--moe_config", config("hidden.yaml", "hidden", "小説")]
    assert study_of(moe_entry, hidden + ["--gate_seed", "7"], capsys) == study_of(moe_entry, hidden, capsys)
    other_prompts = argv + ["--moe_config", config("hidden2.yaml", "hidden", "料理")]
    assert study_of(moe_entry, other_prompts, capsys) != study_of(moe_entry, hidden, capsys)
    random = argv + ["--moe_config", config("random.yaml", "random", "小説")]
    assert study_of(moe_entry, argv + ["--moe_config", config("random2.yaml", "random", "料理")], capsys) == \
        study_of(moe_entry, random, capsys)


# ------------------------------------------------------------------ a real run in the default run directories

def run_jglue(models, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [a for a in jglue_argv(models, cwd) if a not in ("--run_dir", str(cwd / "run"))]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "merge_task_vector_jglue.py"), *argv, "--n_trials", "2",
                           *extra], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


def studies_in_runs(cwd: Path) -> dict[str, int]:
    """{study name: trials} over runs/<study>/study.db."""
    found = {}
    for db in (cwd / "runs").glob("*/study.db"):
        for name in optuna.get_all_study_names(f"sqlite:///{db}"):
            found[name] = len(optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials)
    return found


@pytest.fixture(scope="module")
def finished_in_runs(models, tmp_path_factory):
    """A finished two-trial run with the default run directory (runs/<study>/ under its working directory)."""
    cwd = tmp_path_factory.mktemp("default_runs")
    done = run_jglue(models, cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    (name,) = studies_in_runs(cwd)
    return {"cwd": cwd, "study": name}


def test_a_finished_run_rerun_with_another_batch_size_resumes_its_study(models, finished_in_runs):
    cwd = finished_in_runs["cwd"]
    again = run_jglue(models, cwd, "--batch_size", "4", "--output_dir", str(cwd / "out2"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert studies_in_runs(cwd) == {finished_in_runs["study"]: 2}  # no new study, no extra trial
    assert "resuming: 2 of 2 trials already finished" in again.stderr
    recipe = json.loads((cwd / "out2" / "merge_recipe.json").read_text())
    assert recipe["study"]["name"] == finished_in_runs["study"] and recipe["inputs"]["evaluator"]["batch_size"] == 4


def test_a_new_study_beside_one_of_the_same_models_names_the_inputs_that_differ(
        models, finished_in_runs, monkeypatch, caplog, capsys):
    cwd = finished_in_runs["cwd"]
    monkeypatch.chdir(cwd)
    argv = [a for a in jglue_argv(models, cwd) if a not in ("--run_dir", str(cwd / "run"))]
    argv[argv.index("--output_dir") + 1] = str(cwd / "out_seed7")
    with caplog.at_level(logging.WARNING):
        study_of(jglue_in_process, argv + ["--optuna_seed", "7", "--weight_max", "3", "--batch_size", "2"], capsys)
    notes = [r.getMessage() for r in caplog.records if "a study for the same models exists" in r.getMessage()]
    assert len(notes) == 1, caplog.text
    assert f"({finished_in_runs['study']})" in notes[0]
    assert "optuna_seed (42 -> 7)" in notes[0] and "weight_max (2.0 -> 3.0)" in notes[0]
    assert "batch_size" not in notes[0]  # it does not count, so it is not a reason

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # other models: not the same experiment, nothing to say
        study_of(jglue_in_process, argv + ["--tuned_model", str(models["target2"])], capsys)
        study_of(jglue_in_process, argv + ["--batch_size", "2"], capsys)  # resumes its own study: nothing to say
    assert "a study for the same models" not in caplog.text


def test_a_study_made_before_the_identity_rule_is_named_with_the_flag_that_resumes_it(
        models, tmp_path, monkeypatch, caplog, capsys):
    # Such a study holds only the recipe "inputs" (batch size included) under a name hashed from all of them.
    monkeypatch.chdir(tmp_path)
    argv = [a for a in jglue_argv(models, tmp_path) if a not in ("--run_dir", str(tmp_path / "run"))]
    config = validate(JGLUE, parse_namespace(JGLUE.command_line, argv + ["--batch_size", "8", "--dry_run"]))
    old_dir = tmp_path / "runs" / "jglue-layer-791a752ffd"
    old_dir.mkdir(parents=True)
    old = optuna.create_study(study_name=old_dir.name, storage=f"sqlite:///{old_dir / 'study.db'}",
                              direction="maximize")
    old.set_user_attr("inputs", config.recipe_inputs())
    with caplog.at_level(logging.WARNING):
        study_of(jglue_in_process, argv + ["--batch_size", "16"], capsys)
    assert "exists under another name (jglue-layer-791a752ffd); pass --study_name jglue-layer-791a752ffd" in \
        caplog.text
