"""A judge that cannot work is found before any model loads, and a judge that stops working stops the study.

Before the run, one tiny probe request with the run's model, URL and key: a bad key, an unknown model or a server
that cannot be reached is one line and exit code 2. During the run, a 401 or a 404 stops the study at once (one
trial, not MAX_CONSECUTIVE_FAILURES). All against the loopback judge server with the real openai and anthropic
SDKs; the planted key is in no message."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from judge_server import Behaviour, JudgeServer, fail, reply
from mini_bench import write_mini_bench
from task_vector_opt.cli.flags import JUDGE_FLAGS
from task_vector_opt.errors import StudyStopped, UsageError
from task_vector_opt.evaluation.judges.api import JudgeRefused
from task_vector_opt.evaluation.judges.judgment import JudgeRequest
from task_vector_opt.evaluation.judges.registry import make_judge
from task_vector_opt.evaluation.judges.settings import judge_spec_from_args
from task_vector_opt.search.study import MAX_CONSECUTIVE_FAILURES, make_objective, run_search
from tiny_models import make_model, make_tokenizer, make_trio

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = "sk-good-key-4711abcd"
PLANTED = "sk-PLANTED-wrong-key-9c1e"  # the key the user set by mistake: it must appear in no output
KEY_VARS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN",
            "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT")
BACKENDS = {  # --judge_model_name, the key variable, and the base URL's path for each SDK
    "openai": ("gpt-4o-mini", "OPENAI_API_KEY", "/v1"),
    "anthropic": ("claude-sonnet-4-5", "ANTHROPIC_API_KEY", ""),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    srv = JudgeServer().start()
    srv.api_key = GOOD_KEY
    srv.models = {name for name, _, _ in BACKENDS.values()}
    yield srv
    srv.stop()


def spec(backend: str, url: str, *extra: str):
    model, _, path = BACKENDS[backend]
    parser = argparse.ArgumentParser()
    for flag in JUDGE_FLAGS:
        flag.add_to(parser)
    return judge_spec_from_args(parser.parse_args(
        ["--judge_model_name", model, "--judge_base_url", f"{url}{path}", "--judge_cache", "none",
         "--judge_max_retries", "0", "--judge_timeout", "5", *extra]))


def probe_error(backend: str, url: str, *extra: str) -> UsageError:
    with pytest.raises(UsageError) as info:
        make_judge(spec(backend, url, *extra), probe=True)
    assert PLANTED not in str(info.value) and GOOD_KEY not in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    return info.value


def requests_(n: int) -> list[JudgeRequest]:
    return [JudgeRequest("You are a strict judge.", f"[Question] q{i}\n[Answer] a{i}") for i in range(n)]


# ------------------------------------------------------------------------------------------ the probe itself

@pytest.mark.parametrize("backend", BACKENDS)
def test_the_probe_is_one_tiny_request_with_the_runs_model_url_and_key(server, monkeypatch, caplog, backend):
    model, variable, _ = BACKENDS[backend]
    monkeypatch.setenv(variable, GOOD_KEY)
    with caplog.at_level(logging.INFO):
        judge = make_judge(spec(backend, server.url), probe=True)
    judge.close()
    assert server.count == 1
    probe = server.requests[0]
    assert probe.body["model"] == model and probe.body["max_tokens"] == 1
    assert probe.path == ("/v1/chat/completions" if backend == "openai" else "/v1/messages")
    assert GOOD_KEY in (probe.headers.get("authorization", "") + probe.headers.get("x-api-key", ""))
    assert "probe request was answered" in caplog.text and GOOD_KEY not in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_key_is_one_line_naming_the_variable_to_fix(server, monkeypatch, backend):
    _, variable, _ = BACKENDS[backend]
    monkeypatch.setenv(variable, PLANTED)
    error = probe_error(backend, server.url)
    assert error.flag is None and f"refuses the key in {variable}" in str(error) and "401" in str(error)
    assert f"set {variable} to a valid key" in str(error)
    assert server.count == 1  # a 401 is not retried


def test_a_server_that_wants_a_key_when_none_is_set_says_which_variable(server):
    parser_spec = spec("openai", server.url, "--judge_backend", "openai-compatible")
    with pytest.raises(UsageError, match="without a key \\(OPENAI_API_KEY is not set\\)"):
        make_judge(parser_spec, probe=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_model_is_one_line_naming_the_model_flag(server, monkeypatch, backend):
    _, variable, _ = BACKENDS[backend]
    monkeypatch.setenv(variable, GOOD_KEY)
    server.models = {"another-model"}
    error = probe_error(backend, server.url)
    assert error.flag == "--judge_model_name" and BACKENDS[backend][0] in str(error) and "404" in str(error)
    assert "--judge_base_url" in str(error)  # a URL without /v1 gives 404 too


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreachable_server_is_one_line_naming_the_url_flag(monkeypatch, backend):
    _, variable, _ = BACKENDS[backend]
    monkeypatch.setenv(variable, PLANTED)
    closed = JudgeServer().start()
    url = closed.url
    closed.stop()  # nothing listens on this port any more
    error = probe_error(backend, url, "--judge_max_retries", "1")  # the SDK's own retry, then the error
    assert error.flag == "--judge_base_url" and "cannot reach" in str(error) and url in str(error)
    assert "Connection refused" in str(error)


def test_a_server_too_slow_for_the_timeout_names_the_url_and_the_timeout(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", GOOD_KEY)
    server.rule = lambda body: reply(delay_s=2.0)
    error = probe_error("openai", server.url, "--judge_timeout", "0.3")
    assert error.flag == "--judge_base_url" and "--judge_timeout" in str(error)


def test_a_server_error_at_the_probe_is_said_and_left_to_the_run(server, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", GOOD_KEY)
    server.push(fail(500, echo_auth_in_error=True, error_message="overloaded"))
    with caplog.at_level(logging.WARNING):
        judge = make_judge(spec("openai", server.url), probe=True)  # no error: an outage may pass
    try:
        judgments, _ = judge.judge_many(requests_(2), progress=False)
    finally:
        judge.close()
    assert [j.rating for j in judgments] == [7.0, 7.0]
    assert "probe request failed" in caplog.text and "InternalServerError" in caplog.text
    assert GOOD_KEY not in caplog.text  # the server repeated the key in its error


def test_quota_exhausted_is_a_key_problem(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", GOOD_KEY)
    server.push(fail(429, error_message="You exceeded your current quota", error_type="insufficient_quota",
                     error_code="insufficient_quota"))
    error = probe_error("openai", server.url)
    assert error.flag is None and "no quota" in str(error) and "OPENAI_API_KEY" in str(error)


# ------------------------------------------------------------------------------------------ during the run

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("refusal", ["revoked key", "retired model"])
def test_a_401_or_404_during_the_run_raises_at_once_and_sends_no_more(server, monkeypatch, backend, refusal):
    _, variable, _ = BACKENDS[backend]
    monkeypatch.setenv(variable, GOOD_KEY)
    judge = make_judge(spec(backend, server.url, "--parallel", "2"), probe=True)
    if refusal == "revoked key":
        server.api_key = "sk-the-new-key-0000"
    else:
        server.models = set()
    try:
        with pytest.raises(JudgeRefused) as info:
            judge.judge_many(requests_(20), progress=False)
    finally:
        judge.close()
    assert info.value.stops_study
    assert ("refuses the key" if refusal == "revoked key" else "--judge_model_name") in str(info.value)
    assert GOOD_KEY not in str(info.value)
    assert 2 <= server.count <= 1 + 4  # the probe, the requests in flight (2), at most one more each: not 20


def test_a_revoked_key_stops_the_study_after_one_trial_not_after_several(server, monkeypatch, tmp_path):
    from task_vector_opt.cli.pipelines import MT_BENCH
    from task_vector_opt.evaluation.mt_bench import MTBenchEvaluator, mt_bench_settings_from_args

    monkeypatch.setenv("OPENAI_API_KEY", GOOD_KEY)
    write_mini_bench(tmp_path / "data")
    args = MT_BENCH.command_line.parser().parse_args([
        "--bench_dir", str(tmp_path / "data"), "--bench_name", "mini",
        "--judge_file", str(tmp_path / "data" / "judge_prompts.jsonl"), "--judge_model_name", "gpt-4o-mini",
        "--judge_base_url", f"{server.url}/v1", "--judge_max_retries", "0", "--judge_timeout", "5",
        "--judge_cache", "none", "--max_new_tokens", "2"])  # --on_judge_failure: the default, fail_trial
    scorer = MTBenchEvaluator(mt_bench_settings_from_args(args), tmp_path / "run")
    server.api_key = "sk-rotated-key-0000"
    tokenizer = make_tokenizer(256)
    model = make_model("llama", vocab_size=len(tokenizer))
    study = optuna.create_study(direction="maximize")
    objective = make_objective(["w"], 0, 2, lambda w, trial: (lambda s: (s.value, s.details))(
        scorer.score(model, tokenizer, trial)))
    with pytest.raises(StudyStopped, match="refuses the key in OPENAI_API_KEY"):
        run_search(study, 10, objective)
    assert len(study.trials) == 1 < MAX_CONSECUTIVE_FAILURES
    assert study.trials[0].state == TrialState.FAIL


# ------------------------------------------------------------------------------------------ through the script

@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama", vocab_size=384)  # room for Japanese bytes


def mt_bench(trio, tmp_path, url: str, key: str, *extra: str) -> subprocess.CompletedProcess:
    judge_file = write_mini_bench(tmp_path / "data")
    cmd = [sys.executable, str(ROOT / "merge_task_vector_mt_bench.py"), "--target_model", str(trio["target"]),
           "--base_model", str(trio["base"]), "--tuned_model", str(trio["tuned"]), "--dtype", "float32",
           "--optimize_mode", "layer", "--judge_model", "gpt-4o-mini", "--judge_base_url", url,
           "--judge_max_retries", "0", "--judge_timeout", "20", "--bench_dir", str(tmp_path / "data"),
           "--bench_name", "mini", "--judge_file", str(judge_file), "--max_new_tokens", "3", "--n_trials", "8",
           "--run_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "out"), "--judge_cache", "none",
           *extra]
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(env, OMP_NUM_THREADS="1", OPENAI_API_KEY=key))


@pytest.mark.parametrize("problem", ["bad key", "unknown model", "unreachable"])
def test_the_script_stops_before_loading_any_model_with_one_line_and_exit_code_2(server, trio, tmp_path, problem):
    url = f"{server.url}/v1"
    if problem == "unknown model":
        server.models = {"gpt-4o"}
    if problem == "unreachable":
        url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
    done = mt_bench(trio, tmp_path, url, PLANTED if problem == "bad key" else GOOD_KEY)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err  # no log line, no traceback
    expected = {"bad key": "refuses the key in OPENAI_API_KEY", "unknown model": "--judge_model_name",
                "unreachable": "--judge_base_url"}[problem]
    assert expected in err, err
    assert PLANTED not in done.stdout + done.stderr
    assert server.count == (0 if problem == "unreachable" else 1)  # the probe, and nothing after it
    assert not (tmp_path / "run" / "records").exists() and not (tmp_path / "out").exists()


def test_the_script_stops_the_study_at_the_first_401_of_the_run(server, trio, tmp_path):
    answered = {"n": 0}

    def rule(body):
        answered["n"] += 1
        if answered["n"] == 1:  # the probe passes; then the key is revoked
            return reply("OK")
        return Behaviour(status=401, error_message="key revoked", echo_auth_in_error=True)

    server.rule = rule
    done = mt_bench(trio, tmp_path, f"{server.url}/v1", GOOD_KEY, "--log_level", "WARNING")
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the study was stopped by trial 0") and "refuses the key in OPENAI_API_KEY" in last
    assert GOOD_KEY not in done.stdout + done.stderr  # the server repeated the key in its error
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    ran = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials()
           if t.state != TrialState.WAITING]  # the w=0 baseline stays enqueued for the rerun
    assert len(ran) == 1 and ran[0].state == TrialState.FAIL  # not MAX_CONSECUTIVE_FAILURES trials
    assert server.count <= 1 + 8  # the probe and at most the first trial's requests (4 questions x 2 turns)
