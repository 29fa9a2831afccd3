"""Inputs that lie: broken weight files, NaN weights, a merge whose logits are not numbers, another architecture.

Each one is reported in one line naming the flag (exit code 2), fails only the trial it spoils, or is
applied with one warning, on tiny random models.
"""
import logging
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file, save_file

from judge_server import JudgeServer, reply
from mini_bench import write_mini_bench
from task_vector_opt import engine
from task_vector_opt.cli.flags import parse_namespace, run_cli
from task_vector_opt.cli.pipelines import JGLUE, MT_BENCH
from task_vector_opt.cli.validation import validate
from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.finite import NonFiniteLogits, finite_logits_guard
from task_vector_opt.merging.moe import workspace as moe_model
from task_vector_opt.merging.task_vector import build_task_vector
from cli_checks import expect_usage_error, jglue_in_process, refuse_model_loads
from test_moe import run_config as moe_run_config
from tiny_models import make_model, make_moe_models, make_tokenizer, make_trio, save

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"
VOCAB = 272  # above the tiny tokenizer's 257 tokens
FLAG_OF = {"target": "--target_model", "base": "--base_model", "tuned": "--tuned_model"}




@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama", vocab_size=VOCAB, tokenizer=make_tokenizer())


@pytest.fixture
def trio(pristine, tmp_path):
    """A private copy of the trio, so a test may damage its files."""
    return {role: Path(shutil.copytree(path, tmp_path / "models" / role)) for role, path in pristine.items()}


def jglue_argv(trio, tmp_path, *extra):
    return ["--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
            str(trio["tuned"]), "--dtype", "float32", "--device", "cpu", "--task_search_path", str(DEMO_TASKS),
            "--jglue_tasks", "demo_skill", "--jglue_limit", "4", "--output_dir", str(tmp_path / "out"),
            "--run_dir", str(tmp_path / "run"), *extra]


def jglue_config(trio, tmp_path, *extra):
    return validate(JGLUE, parse_namespace(JGLUE.command_line, jglue_argv(trio, tmp_path, *extra)))


def weights_file(directory: Path) -> Path:
    return directory / "model.safetensors"


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) * 2 // 3])  # an interrupted download: header intact, data cut short


def replace_with_html(file: Path) -> None:
    file.write_text("<!DOCTYPE html><html><body>Repository not found</body></html>\n" * 4)


def edit_tensor(directory: Path, name: str, edit) -> None:
    """Rewrite one tensor of a saved model in place (``edit`` gets the tensor and may change it)."""
    tensors = load_file(weights_file(directory))
    edit(tensors[name])
    save_file(tensors, str(weights_file(directory)), metadata={"format": "pt"})


def set_first(value: float):
    def edit(tensor):
        tensor.view(-1)[0] = value
    return edit


# -------------------------------------------------------------------------------------- broken weight files

@pytest.mark.parametrize("role", ["target", "base", "tuned"])
@pytest.mark.parametrize("damage,words", [(truncate, "is truncated"), (replace_with_html, "not a safetensors file")])
def test_truncated_or_non_safetensors_weight_file_is_one_line_naming_file_and_flag_before_any_model_loads(
        trio, tmp_path, capsys, monkeypatch, role, damage, words):
    refuse_model_loads(monkeypatch, engine)
    damage(weights_file(trio[role]))
    expect_usage_error(jglue_in_process, jglue_argv(trio, tmp_path), capsys, FLAG_OF[role], str(weights_file(trio[role])),
                       words)


@pytest.mark.parametrize("role", ["target", "tuned"])
def test_weight_file_broken_after_validation_is_one_line_naming_file_and_flag_when_opened(trio, tmp_path, role):
    config = jglue_config(trio, tmp_path)  # valid now; the file is cut short afterwards (e.g. a disk filled up)
    truncate(weights_file(trio[role]))
    with pytest.raises(UsageError) as error:
        engine.prepare(config)
    message = str(error.value)
    assert error.value.exit_code == 2 and len(message.splitlines()) == 1
    assert message.startswith(FLAG_OF[role]) and str(weights_file(trio[role])) in message and "truncated" in message


# -------------------------------------------------------------------------------------- non-finite weights

@pytest.mark.parametrize("role", ["target", "base", "tuned"])
@pytest.mark.parametrize("value,kind", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_non_finite_weight_in_target_base_or_tuned_is_refused_naming_model_and_tensor(trio, tmp_path, role,
                                                                                      value, kind):
    tensor = "model.layers.1.self_attn.v_proj.weight"
    edit_tensor(trio[role], tensor, set_first(value))
    config = jglue_config(trio, tmp_path)
    with pytest.raises(UsageError) as error:
        engine.prepare(config)
    message = str(error.value)
    assert error.value.exit_code == 2 and len(message.splitlines()) == 1
    assert message.startswith(FLAG_OF[role]), message
    assert str(trio[role]) in message and tensor in message and f"({kind})" in message


def test_nan_in_tuned_weights_exits_2_through_the_script(trio, tmp_path, capsys):
    edit_tensor(trio["tuned"], "model.norm.weight", set_first(float("nan")))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(jglue_in_process, jglue_argv(trio, tmp_path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # the loading progress bars share stderr; the error is its last line
    assert err.count("error: ") == 1
    error = err[err.index("error: "):].strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: --tuned_model: "), error
    assert "model.norm.weight" in error and "(nan)" in error and str(trio["tuned"]) in error


def test_a_task_vector_too_large_for_the_dtype_names_the_tensor_and_the_dtype_flag(trio, tmp_path):
    edit_tensor(trio["tuned"], "model.norm.weight", set_first(1e6))  # finite in float32, not in float16
    model = make_model("llama", VOCAB)
    with pytest.raises(UsageError, match=r"^--dtype: tensor model\.norm\.weight: .*float16 \(inf\)"):
        build_task_vector(model, trio["base"], trio["tuned"], dtype=torch.float16, store_device="cpu")


# -------------------------------------------------------------------------------------- a vector of zeros

@pytest.mark.parametrize("which", ["the only tuned model", "the second of two"])
def test_a_tuned_model_equal_to_the_base_exits_2_naming_it_as_the_vector_is_built(trio, tmp_path, capsys, which):
    same = Path(shutil.copytree(trio["base"], tmp_path / "models" / "same_as_base"))
    argv = jglue_argv(trio, tmp_path)
    argv[argv.index("--tuned_model") + 1] = str(same) if which == "the only tuned model" else f"{trio['tuned']},{same}"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(jglue_in_process, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # the loading progress bars share stderr; the error is its last line
    assert err.count("error: ") == 1
    error = err[err.index("error: "):].strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: --tuned_model: "), error
    assert repr(str(same)) in error and "equals --base_model" in error and "is zero" in error, error
    assert not (tmp_path / "out").exists()
    assert not optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'run' / 'study.db'}")  # before any search


def test_a_tuned_model_that_differs_only_in_the_embeddings_skip_embed_leaves_out_is_refused_saying_so(trio, tmp_path):
    edit_tensor(trio["tuned"], "model.embed_tokens.weight", lambda t: t.copy_(load_file(
        weights_file(trio["base"]))["model.embed_tokens.weight"]))  # equal to the base there first
    same = Path(shutil.copytree(trio["base"], tmp_path / "embed_only"))
    edit_tensor(same, "model.embed_tokens.weight", lambda t: t.add_(1.0))
    model = make_model("llama", VOCAB)
    vector = build_task_vector(model, trio["base"], same, dtype=torch.float32, store_device="cpu")
    assert vector["model.embed_tokens.weight"].delta.abs().max() == 1.0  # applied without --skip_embed
    with pytest.raises(UsageError, match=r"^--tuned_model: .*equals --base_model .*--skip_embed leaves out"):
        build_task_vector(model, trio["base"], same, dtype=torch.float32, store_device="cpu", skip_embed=True)


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory):
    return make_moe_models(tmp_path_factory.mktemp("moe_models"), "llama", VOCAB, seed=10)


@pytest.mark.parametrize("role,flag", [("tuned", "--tuned_model"), ("target2", "--target_model_2")])
def test_nan_in_the_moe_inputs_is_refused_naming_model_and_tensor(moe_models, tmp_path, role, flag):
    models = {**moe_models, "targets": list(moe_models["targets"])}
    copy = Path(shutil.copytree(moe_models[role] if role == "tuned" else moe_models["targets"][1], tmp_path / role))
    if role == "tuned":
        models["tuned"] = copy
    else:
        models["targets"][1] = copy
    tensor = "model.layers.0.mlp.up_proj.weight"  # an expert MLP: read from the file, not through load_model
    edit_tensor(copy, tensor, set_first(float("nan")))
    with pytest.raises(UsageError) as error:
        moe_model.prepare(moe_run_config(models, tmp_path))
    message = str(error.value)
    assert message.startswith(flag) and str(copy) in message and tensor in message and "(nan)" in message


# -------------------------------------------------------------------------------------- non-finite logits

def test_logits_guard_raises_on_a_model_made_nan_after_loading_and_is_removed_on_exit():
    tokenizer = make_tokenizer()
    model = make_model("llama", VOCAB)
    ids = tokenizer("3+4=", return_tensors="pt").input_ids
    with finite_logits_guard(model):
        assert torch.isfinite(model(ids).logits).all()  # a sound model passes
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
        with pytest.raises(NonFiniteLogits, match=r"non-finite logits \(nan\) in the merged model"):
            model(ids)
    assert torch.isnan(model(ids).logits).any()  # the hook is gone: no guard outside scoring


def overflowing_at_w1(trio, row: int = 5) -> None:
    """lm_head row ``row``: 1e38 in the target, tuned - base = 3e38. Every input is finite, and so are the
    logits at w=0; at w=1 the merged row is 4e38, beyond float32, so that row of logits is NaN/inf. Weights up
    to 0.8 stay finite."""
    edit_tensor(trio["target"], "lm_head.weight", lambda t: t[row].fill_(1e38))
    edit_tensor(trio["tuned"], "lm_head.weight", lambda t: t[row].add_(3e38))


def failed_and_completed(study):
    trials = study.get_trials(deepcopy=False)
    w1 = next(t for t in trials if t.user_attrs.get("baseline", "").startswith("w=1"))
    w0 = next(t for t in trials if t.user_attrs.get("baseline", "").startswith("w=0"))
    return w1, w0


@pytest.mark.filterwarnings("ignore:Fixed parameter")  # the baselines w=1 lie outside --weight_max 0.5
def test_jglue_trial_whose_merge_gives_non_finite_logits_fails_with_the_reason_and_w0_completes(trio, tmp_path,
                                                                                                caplog):
    overflowing_at_w1(trio)
    config = jglue_config(trio, tmp_path, "--n_trials", "3", "--weight_max", "0.5", "--jglue_holdout_limit", "4",
                          "--optimize_mode", "all")
    with caplog.at_level(logging.WARNING, logger="task_vector_opt.engine"):
        result = engine.run(config, lambda c: JGLUE.make_evaluator(c.evaluator, c.run_dir))
    study = optuna.load_study(study_name=config.study_name, storage=config.storage)
    w1, w0 = failed_and_completed(study)
    assert w1.state == TrialState.FAIL and w1.value is None
    assert "non-finite logits" in w1.user_attrs["fail_reason"] and "merged model" in w1.user_attrs["fail_reason"]
    assert w0.state == TrialState.COMPLETE and w0.value is not None
    assert result.n_failed == 1 and result.best_trial != w1.number
    # the held-out stage skips the w=1 candidate with a warning instead of crashing or scoring it
    assert "w=1" not in result.holdout and "w=0" in result.holdout
    assert any("holdout w=1" in r.getMessage() and "non-finite logits" in r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings("ignore:Fixed parameter")
def test_mt_bench_trial_whose_merge_gives_non_finite_logits_fails_with_the_reason_and_w0_completes(trio, tmp_path):
    overflowing_at_w1(trio)
    write_mini_bench(tmp_path / "data")
    server = JudgeServer().start()
    server.rule = lambda body: reply("fine [[6]]")
    try:
        args = parse_namespace(MT_BENCH.command_line, [
            "--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
            str(trio["tuned"]), "--dtype", "float32", "--device", "cpu", "--n_trials", "2", "--weight_max", "0.5", "--optuna_sampler", "TPE",
            "--optimize_mode", "all", "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"),
            "--bench_dir", str(tmp_path / "data"), "--bench_name", "mini",
            "--judge_file", str(tmp_path / "data" / "judge_prompts.jsonl"),
            "--judge_backend", "openai-compatible", "--judge_base_url", server.url, "--judge_model_name", "judge",
            "--judge_max_retries", "0", "--judge_timeout", "5", "--judge_cache", "none", "--max_new_tokens", "3"])
        config = validate(MT_BENCH, args)
        engine.run(config, lambda c: MT_BENCH.make_evaluator(c.evaluator, c.run_dir))
    finally:
        server.stop()
    study = optuna.load_study(study_name=config.study_name, storage=config.storage)
    w1, w0 = failed_and_completed(study)
    assert w1.state == TrialState.FAIL and "non-finite logits" in w1.user_attrs["fail_reason"]
    assert w0.state == TrialState.COMPLETE and w0.value == 6.0


# -------------------------------------------------------------------------------------- other architecture

def test_base_and_tuned_of_another_architecture_are_applied_with_one_warning_naming_both(tmp_path, caplog):
    tokenizer = make_tokenizer()
    base = save(make_model("llama", VOCAB, seed=0), tokenizer, tmp_path / "base")
    tuned = save(make_model("llama", VOCAB, seed=1), tokenizer, tmp_path / "tuned")
    target = make_model("mistral", VOCAB, seed=2)  # same tensor names and shapes as the tiny Llama
    with caplog.at_level(logging.WARNING, logger="task_vector_opt.merging.task_vector"):
        vector = build_task_vector(target, base, tuned, dtype=torch.float32, store_device="cpu")
    assert len(vector) == len(list(target.parameters()))  # applied, not refused
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "llama" in warnings[0] and "mistral" in warnings[0] and "--base_model" in warnings[0]


def test_base_and_tuned_of_the_target_architecture_give_no_architecture_warning(pristine, caplog):
    target = make_model("llama", VOCAB)
    with caplog.at_level(logging.WARNING, logger="task_vector_opt.merging.task_vector"):
        build_task_vector(target, pristine["base"], pristine["tuned"], dtype=torch.float32, store_device="cpu")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -------------------------------------------------------------------------------------- --skip_embed

def test_skip_embed_says_the_embeddings_were_skipped_by_the_flag_not_that_they_have_no_counterpart(pristine,
                                                                                                   caplog):
    target = make_model("llama", VOCAB)
    with caplog.at_level(logging.INFO, logger="task_vector_opt.merging.task_vector"):
        vector = build_task_vector(target, pristine["base"], pristine["tuned"], dtype=torch.float32,
                                   store_device="cpu", skip_embed=True)
    assert "model.embed_tokens.weight" not in vector and "lm_head.weight" not in vector
    messages = [r.getMessage() for r in caplog.records]
    assert not any("no counterpart" in m for m in messages), messages
    (skipped,) = [m for m in messages if "--skip_embed" in m]
    assert "skipped" in skipped and "model.embed_tokens.weight" in skipped and "lm_head.weight" in skipped
