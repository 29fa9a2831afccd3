"""The MT-Bench evaluator with a real SDK judge over HTTP: mean of ratings, exclusions, outages, pruning, records."""
import json

import optuna
import pytest
from optuna.trial import TrialState

from judge_server import JudgeServer, fail, reply
from mini_bench import write_mini_bench
from task_vector_opt.errors import StudyStopped
from task_vector_opt.evaluation.mt_bench import JudgeFailure, MTBenchEvaluator, mt_bench_settings_from_args
from task_vector_opt.cli.pipelines import MT_BENCH
from task_vector_opt.search.study import make_objective, run_search
from tiny_models import make_model, make_tokenizer


@pytest.fixture
def server():
    srv = JudgeServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tokenizer(256)
    return make_model("llama", vocab_size=len(tokenizer)), tokenizer


def evaluator(tmp_path, server, *extra):
    write_mini_bench(tmp_path / "data")
    args = MT_BENCH.command_line.parser().parse_args([
        "--bench_dir", str(tmp_path / "data"), "--bench_name", "mini",
        "--judge_file", str(tmp_path / "data" / "judge_prompts.jsonl"),
        "--judge_backend", "openai-compatible", "--judge_base_url", server.url, "--judge_model_name", "test-judge",
        "--judge_max_retries", "0", "--judge_timeout", "5", "--judge_cache", "none", "--max_new_tokens", "4",
        *extra])
    return MTBenchEvaluator(mt_bench_settings_from_args(args), tmp_path / "run")


def test_score_is_the_mean_of_all_turn_ratings_and_records_are_fastchat_files(tmp_path, server, tiny):
    ratings = iter([3, 9] * 8)
    server.rule = lambda body: reply(f"ok [[{next(ratings)}]]")
    model, tokenizer = tiny
    score = evaluator(tmp_path, server).score(model, tokenizer)
    assert score.value == pytest.approx(6.0) and score.details["judged"] == 8 and score.details["excluded"] == 0
    records = tmp_path / "run" / "records" / "search"
    answers = [json.loads(line) for line in (records / "answers.jsonl").read_text().splitlines()]
    judgments = [json.loads(line) for line in (records / "judgments.jsonl").read_text().splitlines()]
    assert {a["question_id"] for a in answers} == {1, 2, 3, 4}
    assert set(answers[0]) >= {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert set(judgments[0]) >= {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn"}
    assert {tuple(j["judge"]) for j in judgments} >= {("test-judge", "single-math-v1"),
                                                      ("test-judge", "single-math-v1-multi-turn")}


def test_unparseable_judgments_are_excluded_and_counted_never_scored_zero(tmp_path, server, tiny):
    server.rule = lambda body: reply("no rating here" if "富士山" in json.dumps(body, ensure_ascii=False)
                                     else "fine [[8]]")
    model, tokenizer = tiny
    score = evaluator(tmp_path, server).score(model, tokenizer)
    assert score.value == 8.0
    assert score.details["excluded"] == 2 and score.details["judged"] == 6
    judgments = [json.loads(line) for line in
                 (tmp_path / "run" / "records" / "search" / "judgments.jsonl").read_text().splitlines()]
    assert sorted(j["score"] for j in judgments).count(-1) == 2  # FastChat's marker, kept out of the mean


def test_a_judge_that_fails_forever_fails_the_trial_instead_of_scoring_it(tmp_path, server, tiny):
    server.rule = lambda body: fail(500)
    model, tokenizer = tiny
    scorer = evaluator(tmp_path, server)
    with pytest.raises(JudgeFailure, match="0 of 8 judgments succeeded"):
        scorer.score(model, tokenizer)

    study = optuna.create_study(direction="maximize")
    run_search_once = make_objective(["w"], 0, 2, lambda w, trial: (lambda s: (s.value, s.details))(
        scorer.score(model, tokenizer, trial)))
    study.optimize(run_search_once, n_trials=1, catch=(Exception,))
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].value is None
    assert "judgments succeeded" in study.trials[0].user_attrs["fail_reason"]


def test_on_judge_failure_stop_stops_the_study(tmp_path, server, tiny):
    server.rule = lambda body: fail(500)
    model, tokenizer = tiny
    scorer = evaluator(tmp_path, server, "--on_judge_failure", "stop")
    study = optuna.create_study(direction="maximize")
    objective = make_objective(["w"], 0, 2, lambda w, trial: (lambda s: (s.value, s.details))(
        scorer.score(model, tokenizer, trial)))
    with pytest.raises(StudyStopped):
        run_search(study, 5, objective)
    assert len(study.trials) == 1


def test_running_mean_is_reported_per_chunk_and_a_pruner_can_stop_the_trial(tmp_path, server, tiny):
    server.rule = lambda body: reply("weak [[2]]")
    model, tokenizer = tiny
    scorer = evaluator(tmp_path, server, "--chunk_size", "1")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=5.0))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        scorer.score(model, tokenizer, trial)
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {0: 2.0}
    assert len(server.requests) == 1 + 2  # the probe, then one question's two turns; the rest were never paid for


def test_bad_evaluator_flags_are_usage_errors(tmp_path, server):
    from task_vector_opt.errors import UsageError

    with pytest.raises(UsageError, match="--chunk_size"):
        evaluator(tmp_path, server, "--chunk_size", "0")
    with pytest.raises(UsageError, match="--min_judged_fraction"):
        evaluator(tmp_path, server, "--min_judged_fraction", "1.5")
