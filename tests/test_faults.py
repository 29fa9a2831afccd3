"""Fault injection through the real engine on tiny models: each fault fails one trial with its reason, the
search goes on to n_trials, no completed trial is lost and nothing is ever scored 0.

Faults: CUDA out-of-memory inside a trial (raised as torch.OutOfMemoryError, which is what PyTorch raises; no
GPU here), a NaN and an infinite score, and a worker on another host that stops beating (Optuna's heartbeat).
The judge outage and the corrupted judge-cache entry are in test_secrets_and_judge_outage.py and
test_judges.py (test_corrupted_cache_row_is_a_miss_and_overwritten).
"""
import math
import time
import weakref

import optuna
import pytest
import torch
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from task_vector_opt import engine
from task_vector_opt.cli.flags import parse_namespace
from task_vector_opt.evaluation.protocol import Evaluator, Score
from task_vector_opt.cli.pipelines import JGLUE
from task_vector_opt.search.study import FINISHED, make_objective, open_storage, run_search
from task_vector_opt.cli.validation import validate
from tiny_models import make_trio

N_TRIALS = 6


class FaultyEvaluator(Evaluator):
    """Scores the live model by a smooth function of its weights; trial numbers in ``faults`` misbehave."""

    pruner = None  # trials run to the end

    def __init__(self, faults: dict[int, str]):
        self.faults = faults
        self.big_tensors: list[weakref.ref] = []
        self.alive_at_next_trial: list[bool] = []

    def score(self, model, tokenizer, trial=None) -> Score:
        self.alive_at_next_trial += [ref() is not None for ref in self.big_tensors]
        self.big_tensors.clear()
        value = float(sum(p.double().sum() for p in model.parameters()))
        fault = self.faults.get(trial.number)
        if fault == "oom":
            activations = torch.empty(64 * 2**20, dtype=torch.uint8)  # held by this frame when the OOM happens
            self.big_tensors.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if fault == "nan":
            return Score(math.nan)
        if fault == "inf":
            return Score(math.inf)
        return Score(value, {"task/a": value})

    def holdout(self, model, tokenizer):
        return None

    def describe(self) -> str:
        return "faulty test evaluator"


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama")


def config_for(trio, tmp_path):
    args = parse_namespace(JGLUE.command_line, [
        "--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
        str(trio["tuned"]), "--dtype", "float32", "--device", "cpu", "--optimize_mode", "parameter",
        "--n_trials", str(N_TRIALS), "--run_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "out"),
        "--jglue_tasks", "demo_skill", "--task_search_path", str(__import__("pathlib").Path(__file__).resolve()
                                                                     .parent.parent / "lm-evaluation-harness" / "demo")])
    return validate(JGLUE, args)


def test_oom_nan_and_inf_fail_their_trials_and_the_search_reaches_n_trials(trio, tmp_path):
    faults = {2: "oom", 3: "nan", 5: "inf"}
    evaluator = FaultyEvaluator(faults)
    config = config_for(trio, tmp_path)
    result = engine.run(config, lambda c: evaluator)

    study = optuna.load_study(study_name=config.study_name, storage=config.storage)
    trials = study.get_trials(deepcopy=False)
    for number, fault in faults.items():
        assert trials[number].state == TrialState.FAIL and trials[number].value is None
    assert trials[2].user_attrs["fail_reason"].startswith("out of memory: CUDA out of memory")
    assert "nan" in trials[3].user_attrs["fail_reason"] and "inf" in trials[5].user_attrs["fail_reason"]
    assert len(study.get_trials(states=FINISHED)) == N_TRIALS
    assert all(t.value != 0 and math.isfinite(t.value) for t in study.get_trials(states=FINISHED))
    # The OOM trial's tensors were freed before the next trial started (the traceback was dropped).
    assert evaluator.alive_at_next_trial == [False]
    assert (tmp_path / "out" / "merge_recipe.json").is_file() and result.best_value == study.best_value


def test_a_trial_of_a_worker_on_another_host_that_stops_beating_is_failed_and_retried(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=0.5)
    study = optuna.create_study(storage=storage, study_name="hb", direction="maximize")
    orphan = study.ask()
    orphan.suggest_float("w", 0.0, 2.0)
    orphan.set_user_attr("worker", "another-host:4242:1")  # not this host: only the heartbeat can tell
    storage.record_heartbeat(orphan._trial_id)
    time.sleep(2.0)  # > grace period (3 x 0.5 s)
    run_search(study, 3, make_objective(["w"], 0.0, 2.0, lambda weights, trial: (weights["w"], {})))
    trials = study.get_trials(deepcopy=False)
    assert trials[orphan.number].state == TrialState.FAIL
    retries = [t for t in trials if RetryFailedTrialCallback.retried_trial_number(t) == orphan.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == {"w": trials[orphan.number].params["w"]}
    assert len(study.get_trials(states=FINISHED)) == 3
