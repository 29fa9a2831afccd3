"""The doors to the libraries' internals (task_vector_opt/internals/): each test fails when the installed Optuna,
lm-eval or vLLM no longer has an internal with the name, parameters or behaviour the code relies on, and the
package uses those internals, and makes process-wide settings, nowhere else."""
import inspect
import os
import re
import sys
import types
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from task_vector_opt.errors import run_cli
from task_vector_opt.internals import lm_eval_internals, optuna_internals, process, vllm_internals
from task_vector_opt.internals.lm_eval_internals import LmEvalChanged, check_token_scoring, no_request_progress_bars
from task_vector_opt.internals.optuna_internals import enqueued_params, set_trial_user_attr
from task_vector_opt.internals.vllm_internals import IN_PROCESS_VARIABLE, VLLMChanged, check_envs
from task_vector_opt.search.scale_first import SCALE_STAGE, SCALES_ATTR, STAGE_ATTR, ScaledSpace, ScaleStage
from task_vector_opt.search.space import search_space
from task_vector_opt.search.study import retry_callback

pytestmark = [pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
              pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")]
PACKAGE = Path(__file__).resolve().parent.parent / "task_vector_opt"
optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------------------------------------------ Optuna

@pytest.fixture(params=["inmemory", "sqlite", "journal"])
def storage(request, tmp_path):
    from task_vector_opt.search.study import open_storage

    if request.param == "inmemory":
        return optuna.storages.InMemoryStorage()
    return open_storage(f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite" else str(tmp_path / "s.log"))


def test_optuna_storage_has_the_trial_user_attr_setter_the_door_calls():
    parameters = list(inspect.signature(optuna.storages.BaseStorage.set_trial_user_attr).parameters)
    assert parameters == ["self", "trial_id", "key", "value"]
    study = optuna.create_study()
    study.ask()
    assert isinstance(study._storage, optuna.storages.BaseStorage)
    assert isinstance(study.trials[0]._trial_id, int)


def test_the_door_sets_a_user_attr_of_a_running_trial_another_process_asked_for(storage):
    study = optuna.create_study(storage=storage, study_name="doors")
    study.ask()  # as a dead worker did: no Trial object for it here
    [running] = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    set_trial_user_attr(study, running, "fail_reason", "worker died")
    reloaded = optuna.load_study(study_name="doors", storage=storage)
    assert reloaded.trials[0].user_attrs == {"fail_reason": "worker died"}


def test_the_door_reads_the_params_optuna_enqueued_a_trial_with(storage):
    study = optuna.create_study(storage=storage, study_name="doors")
    study.enqueue_trial({"scale": 0.25})
    [waiting] = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert waiting.params == {}  # Optuna keeps them elsewhere until the trial suggests them
    assert enqueued_params(waiting) == {"scale": 0.25}
    asked = study.ask()
    assert enqueued_params(study.trials[0]) == {"scale": 0.25} and asked.number == 0


def test_enqueued_user_attrs_reach_the_waiting_trial_the_running_one_and_its_retried_copy(storage):
    """The public path the scale stage keeps its scales on: what workers sharing a study and a resume read."""
    study = optuna.create_study(storage=storage, study_name="doors")
    study.enqueue_trial({"scale": 0.25}, user_attrs={SCALES_ATTR: [0.25]})
    assert study.trials[0].state == TrialState.WAITING and study.trials[0].user_attrs == {SCALES_ATTR: [0.25]}
    trial = study.ask()  # picked up before it suggests anything, as a worker that then dies
    assert trial.user_attrs == {SCALES_ATTR: [0.25]} and trial.params == {}
    failed = study.tell(trial.number, state=TrialState.FAIL)
    retry_callback()(study, failed)
    retried = study.trials[1]
    assert retried.state == TrialState.WAITING and retried.user_attrs == {SCALES_ATTR: [0.25]}


def scale_stage() -> ScaleStage:
    return ScaleStage(ScaledSpace(search_space(["layer_00", "layer_01"], "layer"), 0.0, 2.0), baselines=True)


def test_a_waiting_scale_trial_s_scales_are_read_from_its_user_attrs():
    waiting = optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={STAGE_ATTR: SCALE_STAGE,
                                                                              SCALES_ATTR: [0.25]})
    assert waiting.system_attrs == {}
    assert scale_stage()._scales(waiting) == (0.25,)


def test_a_waiting_scale_trial_of_a_study_from_before_is_read_from_optuna_s_enqueue_key():
    legacy = optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={STAGE_ATTR: SCALE_STAGE},
                                       system_attrs={optuna_internals.ENQUEUE_KEY: {"scale": 0.25}})
    assert scale_stage()._scales(legacy) == (0.25,)


def test_the_scale_stage_enqueues_its_scales_as_user_attrs(storage):
    study = optuna.create_study(storage=storage, study_name="doors", direction="maximize")
    stage = scale_stage()
    stage.start(study)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [tuple(t.user_attrs[SCALES_ATTR]) for t in waiting] == stage.first_points()
    assert [stage._scales(t) for t in waiting] == stage.first_points()


# ----------------------------------------------------------------------------------------------------- lm-eval

def test_lm_eval_builds_requests_with_a_module_level_tqdm_the_door_swaps():
    import lm_eval.api.task as task_module

    lm_eval_internals.check_request_progress_bar()
    assert "tqdm(" in inspect.getsource(task_module.Task.build_all_requests)  # the global is what draws the bar
    original = task_module.tqdm
    with no_request_progress_bars():
        assert task_module.tqdm is not original and task_module.tqdm.keywords == {"disable": True}
    assert task_module.tqdm is original
    with no_request_progress_bars(keep=True):
        assert task_module.tqdm is original


def test_a_lm_eval_that_moved_its_request_bar_is_named(monkeypatch):
    import lm_eval.api.task as task_module

    monkeypatch.delattr(task_module, "tqdm")
    with pytest.raises(LmEvalChanged, match="lm_eval.api.task has no module-level tqdm"):
        lm_eval_internals.check_request_progress_bar()


def test_hflm_token_scoring_and_batch_size_detection_take_what_the_context_once_scorer_passes():
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.huggingface import HFLM

    check_token_scoring(HFLM)
    scoring = inspect.signature(HFLM._loglikelihood_tokens).parameters
    assert list(scoring)[:4] == ["self", "requests", "disable_tqdm", "override_bs"]
    assert list(inspect.signature(HFLM._detect_batch_size).parameters)[:2] == ["self", "requests"]
    assert lm_eval_internals.TOKEN_SCORING in TemplateLM.__abstractmethods__  # the method a model class overrides


def test_hflm_keeps_its_detected_batch_sizes_in_the_dict_the_door_shares():
    from lm_eval.models.huggingface import HFLM

    assert "self.batch_sizes = {}" in inspect.getsource(HFLM.__init__)
    scheduler = inspect.getsource(HFLM._batch_scheduler)
    assert "self.batch_sizes[sched]" in scheduler and "self._detect_batch_size(" in scheduler
    lm = types.SimpleNamespace(batch_sizes={})
    shared = {64: 8}
    lm_eval_internals.share_batch_sizes(lm, shared)
    assert lm.batch_sizes is shared


def test_the_door_calls_hflm_s_own_batch_size_detection():
    calls = []

    class Detecting:
        def _detect_batch_size(self, requests=None, pos=0):
            calls.append(requests)
            return 16

    assert lm_eval_internals.detect_batch_size(Detecting(), ["longest"]) == 16 and calls == [["longest"]]


@pytest.mark.parametrize("broken", ["missing", "renamed_parameter"])
def test_a_lm_eval_without_the_token_scoring_the_scorer_overrides_is_named(broken):
    from task_vector_opt.evaluation.context_once import context_once_class

    if broken == "missing":
        class Changed:
            def _detect_batch_size(self, requests=None, pos=0):
                return 1
        expected = "Changed has no method _loglikelihood_tokens"
    else:
        class Changed:
            def _loglikelihood_tokens(self, requests, disable_tqdm=False, batch_size=None):
                return []

            def _detect_batch_size(self, requests=None, pos=0):
                return 1
        expected = "Changed._loglikelihood_tokens takes no override_bs"
    with pytest.raises(LmEvalChanged, match=re.escape(expected)):
        context_once_class(Changed)


# -------------------------------------------------------------------------------------------------------- vLLM

def fake_vllm(monkeypatch, declared: bool = True) -> list[str | None]:
    """A stand-in vllm package (vLLM needs a GPU): its LLM records the variable's value while it is built."""
    seen: list[str | None] = []
    package = types.ModuleType("vllm")
    envs = types.ModuleType("vllm.envs")
    envs.environment_variables = {IN_PROCESS_VARIABLE: lambda: True} if declared else {}
    package.envs = envs

    class LLM:
        def __init__(self, **kwargs):
            seen.append(os.environ.get(IN_PROCESS_VARIABLE))

    package.LLM = LLM
    monkeypatch.setitem(sys.modules, "vllm", package)
    monkeypatch.setitem(sys.modules, "vllm.envs", envs)
    return seen


@pytest.mark.parametrize("before", [None, "1"])
def test_the_in_process_variable_is_set_only_while_the_vllm_engine_starts(monkeypatch, tmp_path, before):
    from task_vector_opt.evaluation.vllm_backend import VLLMEngine, _start_llm

    if before is None:
        monkeypatch.delenv(IN_PROCESS_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(IN_PROCESS_VARIABLE, before)
    seen = fake_vllm(monkeypatch)
    VLLMEngine()  # a backend that has not started sets nothing
    assert os.environ.get(IN_PROCESS_VARIABLE) == before
    _start_llm(tmp_path, torch.float32, 0.5, False)
    assert seen == [vllm_internals.IN_PROCESS_VALUE]
    assert os.environ.get(IN_PROCESS_VARIABLE) == before  # the rest of the process does not inherit it


def test_a_vllm_that_no_longer_declares_the_in_process_variable_is_named_before_the_engine_starts(monkeypatch,
                                                                                                   tmp_path):
    from task_vector_opt.evaluation.vllm_backend import _start_llm

    monkeypatch.delenv(IN_PROCESS_VARIABLE, raising=False)
    seen = fake_vllm(monkeypatch, declared=False)
    with pytest.raises(VLLMChanged, match=f"vllm.envs declares no {IN_PROCESS_VARIABLE}"):
        _start_llm(tmp_path, torch.float32, 0.5, False)
    assert seen == [] and IN_PROCESS_VARIABLE not in os.environ


def test_check_envs_accepts_a_vllm_that_declares_the_variable_and_refuses_one_without_its_table():
    declares = types.ModuleType("vllm.envs")
    declares.environment_variables = {IN_PROCESS_VARIABLE: lambda: True}
    check_envs(declares)
    with pytest.raises(VLLMChanged, match=re.escape(IN_PROCESS_VARIABLE)):
        check_envs(types.ModuleType("vllm.envs"))


def test_the_pinned_vllm_reads_the_variable_only_while_its_engine_starts_and_then_caches_it():
    """What engine_in_this_process relies on, read from the pinned vLLM's source (tests/vllm_source.py)."""
    import vllm_source

    try:
        read = vllm_source.source_reader()
        envs, engine, core = (read(f"vllm/{path}") for path in ("envs.py", "v1/engine/llm_engine.py",
                                                                 "v1/engine/core.py"))
    except vllm_source.VLLMSourceUnavailable as exc:  # as tests/test_vllm_backend.py: the fake-module tests ran
        pytest.skip(f"vLLM's source is absent here and its wheel cannot be downloaded: {exc}")
    assert f'"{IN_PROCESS_VARIABLE}": lambda' in envs and "def enable_envs_cache" in envs
    assert f"envs.{IN_PROCESS_VARIABLE}" in engine  # read when the engine is built
    assert "enable_envs_cache()" in core  # and cached once the engine core has started


# ----------------------------------------------------------------------------------- process-wide, one place

def test_run_cli_makes_the_process_wide_settings(monkeypatch):
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        run_cli(lambda argv: None, [])
        assert optuna.logging.get_verbosity() == process.OPTUNA_LOG_LEVEL == optuna.logging.ERROR
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


OUTSIDE_THE_DOORS = {
    "Optuna's log level set": r"set_verbosity\(",
    "an environment variable set": r"os\.environ\[[^\]]+\]\s*=|os\.environ\.setdefault|os\.putenv",
    "Optuna's storage": r"\._storage\b",
    "Optuna's system attrs": r"\.system_attrs\b",
    "lm-eval's request bar": r"task_module\.tqdm|lm_eval\.api\.task\.tqdm",
    "HFLM's batch sizes assigned": r"\.batch_sizes\s*=[^=]",
    "HFLM's batch-size detection": r"\._detect_batch_size\(",
}


@pytest.mark.parametrize("what", OUTSIDE_THE_DOORS)
def test_no_module_outside_the_doors_uses_a_library_internal_or_makes_a_process_wide_setting(what):
    pattern = re.compile(OUTSIDE_THE_DOORS[what])
    found = [f"{path.relative_to(PACKAGE)}:{number}" for path in sorted(PACKAGE.rglob("*.py"))
             if "internals" not in path.parts
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == [], f"{what} outside task_vector_opt/internals/: {found}"
