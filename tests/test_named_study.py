"""A study named with --study_name is resumed only with the inputs it was made with: other inputs (another mode,
other models) are one line naming what differs and exit code 2, before any model loads and before anything in
the study changes; workers joining it by name get the same check."""
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from task_vector_opt.cli.flags import parse_namespace
from task_vector_opt.cli.pipelines import JGLUE
from task_vector_opt.cli.validation import validate
from cli_checks import expect_usage_error, jglue_in_process, refuse_every_model_load
from tiny_models import make_trio_and_second_target

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_trio_and_second_target(tmp_path_factory.mktemp("named_study_models"))


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):  # the real runs below load their models in a subprocess
    refuse_every_model_load(monkeypatch)


def argv_of(models, cwd: Path, *extra: str) -> list[str]:
    """The JGLUE flags of a two-trial run on tiny models, its study named 'mine' in cwd/study.db."""
    return ["--target_model", str(models["target"]), "--base_model", str(models["base"]), "--tuned_model",
            str(models["tuned"]), "--dtype", "float32", "--task_search_path", str(DEMO_TASKS), "--jglue_tasks",
            "demo_skill", "--jglue_limit", "8", "--n_trials", "2",
            "--storage", f"sqlite:///{cwd / 'study.db'}", "--study_name", "mine",
            "--output_dir", str(cwd / "out"), "--overwrite_output_dir", "--run_dir", str(cwd / "run"), *extra]


def launch(models, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    """run_merge_jglue.sh with its variables overridden by flags (the last value of a flag wins)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    return subprocess.run(["bash", str(ROOT / "run_merge_jglue.sh"), *argv_of(models, cwd, *extra)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


def snapshot(cwd: Path) -> tuple:
    """Everything a run could change in the study: its trials (number, state, values, params, attrs) and its
    user attrs (the identity among them)."""
    study = optuna.load_study(study_name="mine", storage=f"sqlite:///{cwd / 'study.db'}")
    trials = [(t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs) for t in study.trials]
    return trials, study.user_attrs


@pytest.fixture(scope="module")
def layer_study(models, tmp_path_factory):
    """A finished two-trial study 'mine' of --optimize_mode layer, made through the launcher."""
    cwd = tmp_path_factory.mktemp("named_study")
    done = launch(models, cwd, "--optimize_mode", "layer")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(snapshot(cwd)[0]) == 2
    return cwd


@pytest.mark.e2e
@pytest.mark.parametrize("other, differs", [
    (["--optimize_mode", "parameter"], "optimize_mode ('layer' -> 'parameter')"),
    (["--optimize_mode", "layer", "--tuned_model", "{target2}"], "tuned_model ("),
    (["--optimize_mode", "layer", "--search_only"] + ["--weight_max", "3"], "weight_max (2.0 -> 3.0)"),
], ids=["another mode", "another model", "a worker with another range"])
def test_a_named_study_rerun_with_other_inputs_is_one_line_and_exit_2_and_the_study_is_unchanged(
        models, layer_study, other, differs):
    before = snapshot(layer_study)
    other = [str(models["target2"]) if a == "{target2}" else a for a in other]
    done = launch(models, layer_study, *other)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: --study_name: study 'mine' in sqlite:///") and "made with other inputs" in err
    assert differs in err, err
    assert "pass another --study_name" in err and "rerun with the study's own values" in err
    assert snapshot(layer_study) == before


def in_process_argv(models, layer_study, tmp_path, *extra) -> list[str]:
    argv = argv_of(models, layer_study, *extra)
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "out")
    return argv


def test_the_named_study_with_its_own_inputs_and_a_flag_outside_them_resumes(models, layer_study, tmp_path):
    config = validate(JGLUE, parse_namespace(JGLUE.command_line, in_process_argv(
        models, layer_study, tmp_path, "--optimize_mode", "layer", "--batch_size", "4", "--n_trials", "3")))
    assert config.study_name == "mine"


def test_finalize_of_a_named_study_with_other_inputs_is_refused_too(models, layer_study, tmp_path, capsys):
    argv = in_process_argv(models, layer_study, tmp_path, "--optimize_mode", "all", "--finalize")
    expect_usage_error(jglue_in_process, argv, capsys, "--study_name", "optimize_mode ('layer' -> 'all')")


def test_a_named_study_that_does_not_exist_yet_is_created_with_any_inputs(models, layer_study, tmp_path):
    argv = in_process_argv(models, layer_study, tmp_path, "--optimize_mode", "parameter")
    argv[argv.index("--study_name") + 1] = "yours"
    assert validate(JGLUE, parse_namespace(JGLUE.command_line, argv)).study_name == "yours"


def test_a_named_study_made_before_the_identity_rule_is_checked_on_the_inputs_it_recorded(
        models, tmp_path, capsys):
    # Such a study holds only the recipe "inputs" (batch size included, which does not count).
    argv = argv_of(models, tmp_path, "--optimize_mode", "layer")
    config = validate(JGLUE, parse_namespace(JGLUE.command_line, argv + ["--batch_size", "8"]))
    old = optuna.create_study(study_name="mine", storage=config.storage, direction="maximize")
    old.set_user_attr("inputs", config.recipe_inputs())
    assert validate(JGLUE, parse_namespace(JGLUE.command_line, argv + ["--batch_size", "16"])).study_name == "mine"
    expect_usage_error(jglue_in_process, argv + ["--weight_min", "-1"], capsys, "--study_name",
                       "weight_min (0.0 -> -1.0)")


def made_by(models, cwd: Path, *extra: str) -> None:
    """Study 'mine' in cwd/study.db, holding the identity of the command with ``extra`` (no trial is run)."""
    config = validate(JGLUE, parse_namespace(JGLUE.command_line, argv_of(models, cwd, *extra)))
    study = optuna.create_study(study_name="mine", storage=config.storage, direction="maximize")
    study.set_user_attr("identity", config.study_identity())


def test_a_mismatch_in_the_scale_stage_names_the_flag_and_its_values(models, tmp_path, capsys):
    made_by(models, tmp_path)  # --optimize_mode auto: profile with --scale_search on
    err = expect_usage_error(jglue_in_process, argv_of(models, tmp_path, "--optimize_mode", "profile"), capsys,
                             "--study_name", "differs in scale_search ('on' -> 'off')")
    assert "scale_first" not in err, err


def test_a_mismatch_in_two_long_paths_shows_where_they_differ(models, tmp_path, capsys):
    made_by(models, tmp_path)
    argv = argv_of(models, tmp_path)
    argv[argv.index("--tuned_model") + 1] = str(models["target2"])
    assert str(models["tuned"])[:40] == str(models["target2"])[:40]  # the common prefix is longer than is shown
    expect_usage_error(jglue_in_process, argv, capsys, "--study_name", "tuned_model (", "/tuned' -> ", "/target2')")
