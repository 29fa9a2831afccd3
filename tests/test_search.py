"""The search loop: failures are recorded, never scored; NaN fails a trial; a stop request ends the study."""
import math

import pytest
from optuna.trial import TrialState

from task_vector_opt.errors import SearchAborted, StudyStopped, TrialFailure
from task_vector_opt.search.study import enqueue_baselines, make_objective, open_storage, open_study, run_search

GROUPS = ["embed_tokens", "layer_00", "norm"]


def study_in(tmp_path, name="s"):
    return open_study(open_storage(f"sqlite:///{tmp_path / 'study.db'}"), name, "TPE", 0)


def test_a_nan_score_fails_the_trial_and_does_not_count(tmp_path):
    study = study_in(tmp_path)
    values = iter([math.nan, 0.5, 0.6])
    run_search(study, 2, make_objective(GROUPS, 0, 2, lambda w, t: (next(values), {})))
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "nan" in study.trials[0].user_attrs["fail_reason"]


def test_failures_are_recorded_with_their_reason_and_retried_until_n_trials_finish(tmp_path):
    study = study_in(tmp_path)
    outcomes = iter([RuntimeError("judge down"), 0.1, RuntimeError("oom"), 0.2, 0.3])

    def score(weights, trial):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome, {"task_a": outcome}

    run_search(study, 3, make_objective(GROUPS, 0, 2, score))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.value for t in complete] == [0.1, 0.2, 0.3]
    assert complete[0].user_attrs["task_a"] == 0.1 and "elapsed_s" in complete[0].user_attrs
    reasons = [t.user_attrs["fail_reason"] for t in study.get_trials(states=(TrialState.FAIL,))]
    assert reasons == ["RuntimeError: judge down", "RuntimeError: oom"]


def test_five_failures_in_a_row_abort_the_search_keeping_completed_trials(tmp_path):
    study = study_in(tmp_path)

    def score(weights, trial):
        if trial.number == 0:
            return 0.4, {}
        raise ValueError("broken evaluator")

    with pytest.raises(SearchAborted, match="5 trials failed in a row.*broken evaluator"):
        run_search(study, 10, make_objective(GROUPS, 0, 2, score))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1


def test_an_error_that_stops_the_study_ends_the_search_after_that_trial(tmp_path):
    class JudgeOutage(TrialFailure):
        stops_study = True

    study = study_in(tmp_path)
    calls = []

    def score(weights, trial):
        calls.append(trial.number)
        raise JudgeOutage("503 from the judge")

    with pytest.raises(StudyStopped, match="503 from the judge"):
        run_search(study, 5, make_objective(GROUPS, 0, 2, score))
    assert calls == [0]


def test_baselines_are_enqueued_once_on_a_new_study_only(tmp_path):
    study = study_in(tmp_path)
    enqueue_baselines(study, GROUPS)
    enqueue_baselines(study, GROUPS)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 2


def test_resuming_shifts_the_seed_so_proposals_are_not_replayed(tmp_path):
    first = study_in(tmp_path, "r")
    first.optimize(lambda t: sum(t.suggest_float(g, 0, 2) for g in GROUPS), n_trials=3)
    resumed = study_in(tmp_path, "r")
    resumed.optimize(lambda t: sum(t.suggest_float(g, 0, 2) for g in GROUPS), n_trials=3)
    params = [tuple(t.params.values()) for t in resumed.trials]
    assert len(set(params)) == 6
