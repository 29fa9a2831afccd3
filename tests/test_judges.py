"""Judge backends against a real local HTTP server (real openai / anthropic SDK clients) and a real
in-process hf judge (SmolLM2-135M-Instruct)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sqlite3
import time

import pytest

from judge_server import JudgeServer, fail, reply
from smollm2_model import smollm2_dir_or_skip
from task_vector_opt.cli.flags import JUDGE_FLAGS
from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.judges.cache import JudgmentCache
from task_vector_opt.evaluation.judges.judgment import JudgeRequest, JudgeTally
from task_vector_opt.evaluation.judges.prices import price_for
from task_vector_opt.evaluation.judges.ratings import parse_rating
from task_vector_opt.evaluation.judges.registry import make_judge
from task_vector_opt.evaluation.judges.settings import JudgeSpec, judge_spec_from_args

SECRET = "sk-test-PLANTED-SECRET"
ENV_VARS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_VERSION", "AZURE_OPENAI_API_KEY",
            "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
            "ANTHROPIC_AUTH_TOKEN")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    srv = JudgeServer().start()
    yield srv
    srv.stop()


def parse(argv):
    parser = argparse.ArgumentParser()
    for flag in JUDGE_FLAGS:
        flag.add_to(parser)
    return parser.parse_args(argv)


def spec_for(*argv: str) -> JudgeSpec:
    return judge_spec_from_args(parse(list(argv)))


def requests_(n: int, tag: str = "q") -> list[JudgeRequest]:
    return [JudgeRequest("You are a strict judge.", f"[Question] {tag}{i}\n[Answer] a{i}") for i in range(n)]


def compat(server, tmp_path, *extra: str) -> JudgeSpec:
    return spec_for("--judge_model_name", "local-judge", "--judge_base_url", f"{server.url}/v1",
                    "--judge_cache", str(tmp_path / "cache.sqlite"), "--judge_max_retries", "2",
                    "--judge_timeout", "5", *extra)


def run(spec: JudgeSpec, reqs: list[JudgeRequest]):
    judge = make_judge(spec)
    try:
        return judge.judge_many(reqs, progress=False)
    finally:
        judge.close()


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, expected", [
    ("Explanation... Rating: [[8]]", 8.0), ("[[8.5]]", 8.5), ("[[ 10 ]]", 10.0), ("score [7] overall", 7.0),
    ("see [1] but Rating: [[6]]", 6.0), ("Rating: 8", None), ("[[0]]", None), ("[[11]]", None), ("", None),
])
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


def test_price_table_and_tally_add():
    assert price_for("gpt-4o-2024-08-06") == price_for("gpt-4o")
    assert price_for("gpt-4o-mini-2024-07-18") == price_for("gpt-4o-mini") != price_for("gpt-4o")
    assert price_for("claude-3-5-sonnet-20241022") == (3.0, 15.0)
    assert price_for("gpt-4-0613") == (30.0, 60.0) and price_for("claude-opus-4-1-20250805") == (15.0, 75.0)
    assert price_for("claude-opus-4-6") is None  # not a snapshot of claude-opus-4: unknown, not guessed
    assert price_for("my-local-model") is None
    a = JudgeTally(judgments=2, requests=2, input_tokens=10, cost_usd=0.5)
    a.add(JudgeTally(judgments=1, cache_hits=1, cost_usd=None))  # no requests: cost stays known
    assert a.as_dict()["cost_usd"] == 0.5 and a.judgments == 3 and a.cache_hits == 1
    a.add(JudgeTally(judgments=1, requests=1, cost_usd=None))
    assert a.cost_usd is None
    json.dumps(a.as_dict())


# ----------------------------------------------------------------------------- API judges


def test_openai_compatible_normal_ratings(server, tmp_path):
    spec = compat(server, tmp_path)
    assert spec.backend == "openai-compatible" and spec.name == "openai-compatible:local-judge"
    json.dumps(spec.as_dict())
    judgments, tally = run(spec, requests_(3))
    assert [j.rating for j in judgments] == [7.0, 7.0, 7.0]
    assert not any(j.cached for j in judgments)
    assert tally.requests == 3 and tally.failures == 0 and tally.input_tokens == 300 and tally.output_tokens == 60
    assert tally.cost_usd is None  # unknown price
    body = server.requests[0].body
    assert server.requests[0].path == "/v1/chat/completions"
    assert body["model"] == "local-judge" and body["temperature"] == 0 and body["max_tokens"] == 1024
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert server.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_openai_backend_with_key_and_cost(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    spec = spec_for("--judge_model", "gpt-4o", "--judge_backend", "openai", "--judge_base_url",
                    f"{server.url}/v1", "--judge_cache", "none")
    assert spec.backend == "openai" and spec.cache_path is None
    judgments, tally = run(spec, requests_(2))
    assert [j.rating for j in judgments] == [7.0, 7.0]
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert tally.cost_usd == pytest.approx(2 * (100 * 2.5 + 20 * 10.0) / 1e6)


def test_azure_backend(server, tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-value")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
    spec = spec_for("--judge_model_name", "azure:my-gpt4o", "--judge_cache", "none")
    assert (spec.backend, spec.model) == ("azure", "my-gpt4o")
    judgments, _ = run(spec, requests_(1))
    assert judgments[0].rating == 7.0
    rec = server.requests[0]
    assert rec.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert rec.query["api-version"] == [spec.api_version] and rec.headers["api-key"] == "azure-key-value"


def test_anthropic_normal_ratings(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ant-key-value")
    spec = spec_for("--judge_model_name", "claude-3-5-sonnet-20241022", "--judge_base_url", server.url,
                    "--judge_cache", str(tmp_path / "c.sqlite"))
    assert spec.backend == "anthropic"
    server.push(reply("Rating: [[9]]"), reply("Rating: [[9]]"))
    judgments, tally = run(spec, requests_(2))
    assert [j.rating for j in judgments] == [9.0, 9.0]
    rec = server.requests[0]
    assert rec.path == "/v1/messages"
    # anthropic 2.x sends the key as a bearer token; older SDKs used x-api-key
    assert "ant-key-value" in (rec.headers.get("x-api-key"), rec.headers.get("authorization", "")[7:])
    assert rec.body["system"] == "You are a strict judge." and rec.body["temperature"] == 0
    assert [m["role"] for m in rec.body["messages"]] == ["user"]
    assert tally.input_tokens == 200 and tally.cost_usd == pytest.approx(2 * (100 * 3 + 20 * 15) / 1e6)


def test_anthropic_model_that_refuses_temperature(server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ant-key-value")
    server.rule = lambda body: (fail(400, error_message="temperature is deprecated for this model")
                                if "temperature" in body else reply("Rating: [[8]]"))
    spec = spec_for("--judge_model_name", "claude-opus-4-7", "--judge_base_url", server.url,
                    "--judge_cache", "none", "--parallel", "1")
    judgments, tally = run(spec, requests_(3))
    assert [j.rating for j in judgments] == [8.0] * 3
    assert ["temperature" in r.body for r in server.requests] == [True, False, False, False]


def test_single_bracket_fallback(server, tmp_path):
    server.push(reply("I would give it [6] overall."))
    judgments, tally = run(compat(server, tmp_path), requests_(1))
    assert judgments[0].rating == 6.0 and tally.retries_for_parse == 0


def test_unparseable_is_retried_once_then_excluded_and_not_cached(server, tmp_path):
    server.rule = lambda body: reply("A fine answer, I think.")
    spec = compat(server, tmp_path)
    judgments, tally = run(spec, requests_(1))
    j = judgments[0]
    assert j.rating is None and "unparseable" in j.error and j.text == "A fine answer, I think."
    assert server.count == 2 and tally.retries_for_parse == 1 and tally.failures == 1 and tally.requests == 2
    run(spec, requests_(1))  # failures are never cached: asked again
    assert server.count == 4


def test_unparseable_then_parseable_on_retry(server, tmp_path):
    server.push(reply("no rating here"), reply("Rating: [[5]]"))
    judgments, tally = run(compat(server, tmp_path), requests_(1))
    assert judgments[0].rating == 5.0 and tally.retries_for_parse == 1 and tally.failures == 0


def test_429_then_success_uses_sdk_retry(server, tmp_path):
    server.push(fail(429, retry_after_ms=20), fail(429, headers={"retry-after": "0.01"}, retry_after_ms=None),
                reply("Rating: [[8]]"))
    start = time.monotonic()
    judgments, tally = run(compat(server, tmp_path), requests_(1))
    assert judgments[0].rating == 8.0 and judgments[0].error is None
    assert server.count == 3 and tally.requests == 1 and tally.failures == 0
    assert time.monotonic() - start < 2.0  # retry-after(-ms) honoured, not the default backoff


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_500_forever_gives_none_with_error(server, tmp_path, monkeypatch, kind):
    server.rule = lambda body: fail(500, error_message="boom")
    if kind == "anthropic":
        monkeypatch.setenv("ANTHROPIC_API_KEY", "ant-key-value")
        spec = spec_for("--judge_model_name", "claude-haiku-4-5", "--judge_base_url", server.url,
                        "--judge_cache", str(tmp_path / "c.sqlite"), "--judge_max_retries", "2")
    else:
        spec = compat(server, tmp_path)
    judgments, tally = run(spec, requests_(2))
    assert server.count == 6  # 1 + 2 SDK retries each
    for j in judgments:
        assert j.rating is None and "InternalServerError" in j.error and "500" in j.error and j.text == ""
    assert tally.failures == 2 and tally.requests == 0
    with sqlite3.connect(tmp_path / ("c.sqlite" if kind == "anthropic" else "cache.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == 0


def test_timeout_gives_none(server, tmp_path):
    server.rule = lambda body: reply("Rating: [[7]]", delay_s=1.5)
    spec = spec_for("--judge_model_name", "local-judge", "--judge_base_url", f"{server.url}/v1",
                    "--judge_cache", "none", "--judge_timeout", "0.3", "--judge_max_retries", "1")
    start = time.monotonic()
    judgments, tally = run(spec, requests_(1))
    assert judgments[0].rating is None and "Timeout" in judgments[0].error
    assert server.count == 2 and tally.failures == 1
    assert time.monotonic() - start < 3.0


def test_cache_hits_send_nothing_and_persist(server, tmp_path):
    spec = compat(server, tmp_path)
    reqs = requests_(3)
    first, t1 = run(spec, reqs)
    assert server.count == 3 and t1.cache_hits == 0
    second, t2 = run(spec, reqs + requests_(1, tag="new"))  # a new Judge instance, same file
    assert server.count == 4
    assert [j.cached for j in second] == [True, True, True, False]
    assert [j.rating for j in second[:3]] == [j.rating for j in first]
    assert t2.cache_hits == 3 and t2.requests == 1
    # another rating mode or judge model is another key
    other = dataclasses.replace(spec, model="other-judge")
    run(other, reqs[:1])
    assert server.count == 5


def test_duplicate_requests_in_one_batch_are_sent_once(server, tmp_path):
    spec = dataclasses.replace(compat(server, tmp_path), cache_path=None)
    judgments, tally = run(spec, requests_(1) * 3)
    assert server.count == 1 and [j.rating for j in judgments] == [7.0] * 3 and tally.cache_hits == 2


def test_corrupted_cache_row_is_a_miss_and_overwritten(server, tmp_path, caplog):
    spec = compat(server, tmp_path)
    req = requests_(1)
    run(spec, req)
    key = JudgmentCache.key(spec, req[0])
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        db.execute("UPDATE judgments SET rating = 'garbage', text = NULL WHERE key = ?", (key,))
    with caplog.at_level(logging.WARNING, logger="task_vector_opt.evaluation.judges"):
        judgments, tally = run(spec, req)
    assert judgments[0].rating == 7.0 and not judgments[0].cached and server.count == 2
    assert "corrupted" in caplog.text
    judgments, _ = run(spec, req)
    assert judgments[0].cached and server.count == 2


def test_cache_file_that_is_not_sqlite_is_a_usage_error(server, tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database file" * 100)
    spec = dataclasses.replace(compat(server, tmp_path), cache_path=str(bad))
    with pytest.raises(UsageError) as info:
        make_judge(spec)
    assert info.value.flag == "--judge_cache"


def test_parallel_limits_requests_in_flight(server, tmp_path):
    server.rule = lambda body: reply("Rating: [[7]]", delay_s=0.15)
    spec = compat(server, tmp_path, "--parallel", "3")
    judgments, tally = run(spec, requests_(10))
    assert len(judgments) == 10 and all(j.rating == 7.0 for j in judgments)
    assert server.count == 10
    assert 2 <= server.high_water <= 3


def test_results_keep_request_order(server, tmp_path):
    def rule(body):
        n = int(body["messages"][1]["content"].split("q")[1].split("\n")[0])
        return reply(f"Rating: [[{n % 10 + 1}]]", delay_s=0.05 * (5 - n % 5))
    server.rule = rule
    judgments, _ = run(compat(server, tmp_path, "--parallel", "4"), requests_(8))
    assert [j.rating for j in judgments] == [float(i % 10 + 1) for i in range(8)]


# ----------------------------------------------------------------------------- logprob mode


def lp(p: float) -> float:
    return math.log(p)


def test_logprob_mode_expected_value(server, tmp_path):
    alts = [("8", lp(0.6)), ("7", lp(0.25)), ("9", lp(0.1)), ("foo", lp(0.03)), (" 6", lp(0.02))]
    tokens = [("Rating", lp(0.9), []), (":", lp(0.9), []), (" [[", lp(0.9), []), ("8", lp(0.6), alts),
              ("]]", lp(0.99), [])]
    server.push(reply("Rating: [[8]]", logprobs=tokens))
    spec = compat(server, tmp_path, "--judge_rating_mode", "logprob")
    judgments, tally = run(spec, requests_(1))
    expected = (8 * 0.6 + 7 * 0.25 + 9 * 0.1 + 6 * 0.02) / (0.6 + 0.25 + 0.1 + 0.02)
    assert judgments[0].rating == pytest.approx(expected)
    body = server.requests[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert tally.logprob_fallbacks == 0


def test_logprob_mode_ten_split_into_one_and_zero(server, tmp_path):
    tokens = [("[[", lp(0.9), []), ("1", lp(0.7), [("1", lp(0.7)), ("9", lp(0.3))]),
              ("0", lp(0.8), [("0", lp(0.8)), ("]]", lp(0.2))]), ("]]", lp(0.99), [])]
    server.push(reply("[[10]]", logprobs=tokens))
    judgments, _ = run(compat(server, tmp_path, "--judge_rating_mode", "logprob"), requests_(1))
    expected = 10 * 0.7 * 0.8 + 1 * 0.7 * 0.2 + 9 * 0.3
    assert judgments[0].rating == pytest.approx(expected)


def test_logprob_mode_merged_bracket_token(server, tmp_path):
    tokens = [("Rating:", lp(0.9), []), (" [[6", lp(0.5), [(" [[6", lp(0.5)), (" [[5", lp(0.5)), ("[[4", lp(0.2))]),
              ("]]", lp(0.99), [])]
    server.push(reply("Rating: [[6]]", logprobs=tokens))
    judgments, _ = run(compat(server, tmp_path, "--judge_rating_mode", "logprob"), requests_(1))
    assert judgments[0].rating == pytest.approx(5.5)


def test_logprob_mode_without_logprobs_falls_back_to_text(server, tmp_path, caplog):
    server.rule = lambda body: reply("Rating: [[4]]")  # no logprobs in the payload
    with caplog.at_level(logging.WARNING, logger="task_vector_opt.evaluation.judges"):
        judgments, tally = run(compat(server, tmp_path, "--judge_rating_mode", "logprob"), requests_(3))
    assert [j.rating for j in judgments] == [4.0] * 3
    assert tally.logprob_fallbacks == 3
    assert caplog.text.count("no logprobs") == 1


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, env, flag, needle", [
    (["--judge_model_name", "llama-judge"], {}, "--judge_model_name", "--judge_backend"),
    (["--judge_model_name", "gpt-4o"], {}, "--judge_model_name", "OPENAI_API_KEY"),
    (["--judge_model_name", "claude-3-5-haiku-latest"], {}, "--judge_model_name", "ANTHROPIC_API_KEY"),
    (["--judge_model_name", "azure:dep"], {"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com"},
     "--judge_model_name", "AZURE_OPENAI_API_KEY"),
    (["--judge_model_name", "azure:dep"], {"AZURE_OPENAI_API_KEY": SECRET}, "--judge_model_name",
     "AZURE_OPENAI_ENDPOINT"),
    (["--judge_backend", "openai-compatible", "--judge_model_name", "m"], {}, "--judge_base_url", "OPENAI_BASE_URL"),
    (["--judge_base_url", "localhost:8000"], {}, "--judge_base_url", "http"),
    (["--parallel", "0"], {"OPENAI_API_KEY": SECRET}, "--parallel", "at least 1"),
    (["--judge_timeout", "0"], {"OPENAI_API_KEY": SECRET}, "--judge_timeout", "positive"),
    (["--judge_max_retries", "-1"], {"OPENAI_API_KEY": SECRET}, "--judge_max_retries", "0 or more"),
    (["--judge_model_name", "claude-3-5-haiku-latest", "--judge_rating_mode", "logprob"],
     {"ANTHROPIC_API_KEY": SECRET}, "--judge_rating_mode", "Anthropic"),
    (["--judge_load_in_4bit"], {"OPENAI_API_KEY": SECRET}, "--judge_load_in_4bit", "hf"),
    (["--judge_model_name", "hf:/no/such/dir"], {}, "--judge_model_name", "does not exist"),
])
def test_bad_inputs_are_usage_errors(monkeypatch, argv, env, flag, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UsageError) as info:
        spec_for(*argv)
    assert info.value.flag == flag and needle in str(info.value) and str(info.value).startswith(flag)
    assert SECRET not in str(info.value)


def test_4bit_without_cuda_or_bitsandbytes_is_a_usage_error(tmp_path, monkeypatch):
    import task_vector_opt.evaluation.judges.settings as judge_settings

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    with monkeypatch.context() as patch:
        patch.setattr(judge_settings, "missing_4bit_requirements", lambda: "no CUDA device is visible")
        with pytest.raises(UsageError) as info:
            spec_for("--judge_model_name", str(model_dir), "--judge_load_in_4bit")
        assert info.value.flag == "--judge_load_in_4bit" and "bitsandbytes" in str(info.value)
        assert "CUDA" in str(info.value)
        with pytest.raises(UsageError) as info:
            spec_for("--judge_model_name", "Cohere")
        assert info.value.flag == "--judge_model_name" and "c4ai-command-r-plus-4bit" in str(info.value)
    if judge_settings.missing_4bit_requirements() is not None:  # this machine really lacks them: the real check says so
        with pytest.raises(UsageError) as info:
            spec_for("--judge_model_name", str(model_dir), "--judge_load_in_4bit")
        assert info.value.flag == "--judge_load_in_4bit"


def test_hf_dir_that_is_not_a_model_is_a_usage_error(tmp_path):
    model_dir = tmp_path / "not-a-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    spec = spec_for("--judge_model_name", str(model_dir), "--judge_cache", "none")
    with pytest.raises(UsageError) as info:
        make_judge(spec)
    assert info.value.flag == "--judge_model_name" and "cannot load" in str(info.value)


def test_auto_backend_inference(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    model_dir = tmp_path / "judge"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert spec_for().backend == "openai" and spec_for().model == "gpt-4"  # the original default
    assert spec_for("--judge_model", "o3-mini").backend == "openai"
    assert spec_for("--judge_model", "claude-opus-4-1").backend == "anthropic"
    hf = spec_for("--judge_model", str(model_dir))
    assert (hf.backend, hf.model) == ("hf", str(model_dir))
    assert spec_for("--judge_model", f"hf:{model_dir}").model == str(model_dir)
    assert spec_for("--judge_model", "hf:org/some-judge").model == "org/some-judge"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1")
    compat_spec = spec_for("--judge_model", "qwen-judge")
    assert (compat_spec.backend, compat_spec.base_url) == ("openai-compatible", "http://localhost:8000/v1")


# ----------------------------------------------------------------------------- secrets


def test_planted_key_never_leaks(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cache = tmp_path / "cache.sqlite"
    spec = spec_for("--judge_model_name", "gpt-4o-mini", "--judge_base_url", f"{server.url}/v1",
                    "--judge_cache", str(cache), "--judge_max_retries", "1")
    assert SECRET not in json.dumps(spec.as_dict()) and SECRET not in repr(spec)
    server.push(reply("Rating: [[7]]"), fail(400, error_message="bad request", echo_auth_in_error=True),
                fail(500, echo_auth_in_error=True), fail(500, echo_auth_in_error=True))
    with caplog.at_level(logging.DEBUG):
        judge = make_judge(spec)
        assert SECRET not in repr(judge)
        try:
            judgments, tally = judge.judge_many(requests_(1), progress=False)
            assert judgments[0].rating == 7.0
            bad, _ = judge.judge_many(requests_(1, tag="bad"), progress=False)
            worse, _ = judge.judge_many(requests_(1, tag="worse"), progress=False)
        finally:
            judge.close()
    assert server.requests[1].headers["authorization"] == f"Bearer {SECRET}"  # the key was really sent
    for j in bad + worse:
        assert j.rating is None and SECRET not in j.error and "PLANTED" not in j.error
    assert "BadRequestError" in bad[0].error and "InternalServerError" in worse[0].error
    assert SECRET not in caplog.text and "PLANTED" not in caplog.text
    for path in tmp_path.iterdir():  # the db, its WAL and shm files
        assert b"PLANTED" not in path.read_bytes()


# ----------------------------------------------------------------------------- hf in-process


@pytest.fixture(scope="module")
def smollm2_dir():
    return smollm2_dir_or_skip()


HF_SYSTEM = "Rate the answer."
HF_PAIRS = [("2+2?", "4"), ("Capital of France?", "Berlin"), ("A primary color?", "Blue"), ("Say hi.", "No.")]


def hf_requests():
    return [JudgeRequest(HF_SYSTEM, f"Q: {q}\nA: {a}\nGive [[rating]], 1 to 10.") for q, a in HF_PAIRS]


def test_hf_judge_logprob_mode_on_smollm2(smollm2_dir, tmp_path):
    spec = spec_for("--judge_model_name", str(smollm2_dir), "--judge_rating_mode", "logprob",
                    "--judge_cache", str(tmp_path / "hf.sqlite"))
    assert spec.backend == "hf" and spec.hf_batch_size >= len(HF_PAIRS)
    judge = make_judge(spec)
    try:
        judgments, tally = judge.judge_many(hf_requests(), progress=False)  # one batched forward pass
        assert len(judgments) == len(HF_PAIRS)
        for j in judgments:
            assert j.rating is not None and 1.0 <= j.rating <= 10.0 and j.error is None
        assert tally.requests == len(HF_PAIRS) and tally.failures == 0 and tally.input_tokens > 0
        again, t2 = judge.judge_many(hf_requests(), progress=False)
        assert all(j.cached for j in again) and t2.cache_hits == len(HF_PAIRS) and t2.requests == 0
        # left-padded batches give the ratings of unpadded single prompts
        judge._cache.close()
        judge._cache = None
        judge.spec = dataclasses.replace(spec, hf_batch_size=1, cache_path=None)
        one_by_one, _ = judge.judge_many(hf_requests()[:2], progress=False)
    finally:
        judge.close()
    for a, b in zip(judgments, one_by_one):
        assert a.rating == pytest.approx(b.rating, abs=1e-3)


def test_hf_judge_text_mode_reads_the_rating_smollm2_writes(smollm2_dir):
    # SmolLM2-135M cannot grade answers (measured: in logprob mode it rates "2+2? Berlin" a little above "2+2? 4"),
    # but it copies a short text reliably. So the judgment is dictated, and the text path (chat template, greedy
    # generation, decoding, [[rating]] parsing) must read back exactly the dictated ratings, each on the first try.
    dictated = [3, 8, 10]
    spec = dataclasses.replace(spec_for("--judge_model_name", f"hf:{smollm2_dir}", "--judge_cache", "none"),
                               hf_max_new_tokens=8)
    requests = [JudgeRequest("You repeat text exactly.", f"Repeat exactly: Rating: [[{rating}]]")
                for rating in dictated]
    judgments, tally = run(spec, requests)
    assert [j.rating for j in judgments] == dictated, [j.text for j in judgments]
    assert all(j.error is None and f"[{rating}]" in j.text for j, rating in zip(judgments, dictated))
    assert tally.retries_for_parse == 0 and tally.failures == 0
    assert tally.requests == len(dictated) and tally.output_tokens > 0
