"""Rerunning a command whose study is finished and whose best model is saved does nothing and exits 0 (a supervisor
that reruns a job until it exits 0 stops); any other non-empty --output_dir is still refused."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from task_vector_opt.merging.moe import workspace as moe_workspace
from task_vector_opt import engine
from task_vector_opt.cli.flags import run_cli
from task_vector_opt.cli.pipelines import MT_BENCH_MOE_2, run_pipeline
from cli_checks import expect_usage_error, jglue_in_process, refuse_model_loads
from hub_server import HubServer
from judge_server import JudgeServer
from mini_bench import write_mini_bench
from tiny_models import make_moe_models, make_trio

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"
MOE_VOCAB = 272  # the tiny tokenizer has 257 tokens




def run_script(script: str, argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``directory`` with its modification time and bytes: a rewrite changes one of them."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def trials_in(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{run_dir / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.fixture(scope="module")
def finished_jglue(tmp_path_factory):
    """A finished three-trial JGLUE-style run on tiny models, its best model saved in <root>/out."""
    root = tmp_path_factory.mktemp("rerun")
    trio = make_trio(root / "models", "llama")
    argv = ["--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
            str(trio["tuned"]), "--dtype", "float32", "--task_search_path", str(DEMO_TASKS), "--jglue_tasks",
            "demo_skill", "--jglue_limit", "12", "--n_trials", "3", "--output_dir", str(root / "out"),
            "--run_dir", str(root / "run")]
    done = run_script("merge_task_vector_jglue.py", argv)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "argv": argv, "out": root / "out", "run_dir": root / "run"}


@pytest.mark.parametrize("changes", [[], ["--batch_size", "4", "--log_level", "WARNING"]],
                         ids=["same command", "same study, other batch size"])
def test_rerunning_a_finished_saved_command_exits_0_without_a_trial_a_model_load_or_a_write(
        finished_jglue, monkeypatch, capsys, changes):
    refuse_model_loads(monkeypatch, engine)
    saved_before = snapshot(finished_jglue["out"])
    trials_before = len(trials_in(finished_jglue["run_dir"]))

    run_cli(jglue_in_process, finished_jglue["argv"] + changes)  # returns: exit code 0 (run_cli exits only on errors)

    out = capsys.readouterr().out
    assert "nothing to do" in out and str(finished_jglue["out"]) in out, out
    assert snapshot(finished_jglue["out"]) == saved_before
    assert len(trials_in(finished_jglue["run_dir"])) == trials_before


def test_a_finished_rerun_with_push_to_hub_uploads_the_saved_model_without_a_trial_or_a_write(finished_jglue):
    # A supervisor reruns after an upload that failed: the model is saved, so only the upload is left to do.
    saved_before = snapshot(finished_jglue["out"])
    with HubServer(token="hf_test_dummy") as hub:
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_dummy",
                   HF_HUB_DISABLE_TELEMETRY="1")
        done = subprocess.run([sys.executable, str(ROOT / "merge_task_vector_jglue.py"), *finished_jglue["argv"],
                               "--push_to_hub", "me/tiny-merge"], capture_output=True, text=True, env=env,
                              timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nothing to do" in done.stdout and "pushed to" in done.stdout
    uploaded = hub.repos["me/tiny-merge"]
    assert uploaded["model.safetensors"] == saved_before["model.safetensors"][1]
    assert uploaded["merge_recipe.json"] == saved_before["merge_recipe.json"][1]
    assert snapshot(finished_jglue["out"]) == saved_before
    assert len(trials_in(finished_jglue["run_dir"])) == 3


def _copy_with_recipe(finished_jglue, name: str, edit) -> Path:
    copy = finished_jglue["root"] / name
    if not copy.exists():
        shutil.copytree(finished_jglue["out"], copy)
        recipe_file = copy / "merge_recipe.json"
        recipe = json.loads(recipe_file.read_text())
        if edit(recipe) is False:
            recipe_file.unlink()
        else:
            recipe_file.write_text(json.dumps(recipe))
    return copy


RECIPE_EDITS = {
    "another study": lambda recipe: recipe["study"].update(name="jglue-layer-0123456789"),
    "another best trial": lambda recipe: recipe["best"].update(trial=recipe["best"]["trial"] + 1),
    "no recipe": lambda recipe: False,
}


@pytest.mark.parametrize("edit", RECIPE_EDITS, ids=list(RECIPE_EDITS))
def test_an_output_dir_holding_another_save_is_still_refused(finished_jglue, monkeypatch, capsys, edit):
    refuse_model_loads(monkeypatch, engine)
    other = _copy_with_recipe(finished_jglue, edit.replace(" ", "_"), RECIPE_EDITS[edit])
    expect_usage_error(jglue_in_process, finished_jglue["argv"] + ["--output_dir", str(other)], capsys, "--output_dir",
                       "not empty", "--overwrite_output_dir")


def test_the_saved_model_of_a_study_asked_for_more_trials_is_refused(finished_jglue, monkeypatch, capsys):
    # The study would go on to 4 trials and might find a better model: the save is not this command's result.
    refuse_model_loads(monkeypatch, engine)
    expect_usage_error(jglue_in_process, finished_jglue["argv"] + ["--n_trials", "4"], capsys, "--output_dir",
                       "not empty")


@pytest.fixture(scope="module")
def judge():
    server = JudgeServer().start()
    yield server
    server.stop()


def test_rerunning_a_finished_moe_command_exits_0_and_a_half_present_save_is_refused(judge, tmp_path, monkeypatch,
                                                                                     capsys):
    models = make_moe_models(tmp_path / "models", "mistral", MOE_VOCAB, seed=20)
    write_mini_bench(tmp_path / "data")
    out = tmp_path / "moe"
    argv = ["--target_model_1", str(models["targets"][0]), "--target_model_2", str(models["targets"][1]),
            "--base_model", str(models["base"]), "--tuned_model", str(models["tuned"]), "--gate_mode", "random",
            "--judge_model_name", "local-judge", "--judge_base_url", f"{judge.url}/v1", "--judge_cache", "none",
            "--bench_dir", str(tmp_path / "data"), "--bench_name", "mini",
            "--judge_file", str(tmp_path / "data" / "judge_prompts.jsonl"), "--n_trials", "2",
            "--max_new_tokens", "4", "--dtype", "float32", "--output_dir", str(out), "--run_dir",
            str(tmp_path / "run"), "--save_moe"]
    done = run_script("merge_task_vector_mt_bench_moe_2_experts.py", argv)
    assert done.returncode == 0, done.stderr[-3000:]
    saved_dirs = [tmp_path / "moe-1", tmp_path / "moe-2", out]
    before = {d: snapshot(d) for d in saved_dirs}

    refuse_model_loads(monkeypatch, engine, moe_workspace)
    run_cli(lambda a: run_pipeline(MT_BENCH_MOE_2, a), argv)
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and all(str(d) in printed for d in saved_dirs), printed
    assert {d: snapshot(d) for d in saved_dirs} == before
    assert len(trials_in(tmp_path / "run")) == 2

    # Without the MoE itself the save is incomplete, and finishing it would mean overwriting the experts.
    shutil.rmtree(out)
    expect_usage_error(lambda a: run_pipeline(MT_BENCH_MOE_2, a), argv, capsys, "--output_dir", "moe-1", "does not",
                       "--overwrite_output_dir")
