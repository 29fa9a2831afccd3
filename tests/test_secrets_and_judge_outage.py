"""A judge outage during a real MT-Bench run, from a careless server that repeats the caller's API key in its
error messages: the trial it hits fails with the reason (never a 0 score), the study goes on to n_trials, and
the planted key appears in no file the run writes and in none of its output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from judge_server import Behaviour, JudgeServer, reply
from mini_bench import write_mini_bench
from task_vector_opt.search.study import FINISHED
from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent
PLANTED = {"OPENAI_API_KEY": "sk-PLANTED-openai-7f3a9c", "ANTHROPIC_API_KEY": "sk-ant-PLANTED-51d2",
           "HF_TOKEN": "hf_PLANTEDtoken0042"}
OUTAGE_REQUESTS = 1 + 8  # the judge probe (a 500 there is left to the run), then trial 0: 4 questions x 2 turns


def test_judge_outage_fails_one_trial_and_no_key_is_written_anywhere(tmp_path):
    trio = make_trio(tmp_path / "models", "llama", vocab_size=384)  # room for every byte of Japanese text
    judge_file = write_mini_bench(tmp_path / "data")
    server = JudgeServer().start()
    seen = {"n": 0}

    def rule(body):
        seen["n"] += 1
        if seen["n"] <= OUTAGE_REQUESTS:
            return Behaviour(status=500, echo_auth_in_error=True, error_message="backend down")
        return reply("Fine. Rating: [[6]]")

    server.rule = rule
    cmd = [sys.executable, str(ROOT / "merge_task_vector_mt_bench.py"), "--target_model", str(trio["target"]),
           "--base_model", str(trio["base"]), "--tuned_model", str(trio["tuned"]), "--dtype", "float32",
           "--judge_model", "gpt-4o", "--judge_backend", "openai", "--judge_base_url", f"{server.url}/v1",
           "--judge_max_retries", "0", "--judge_timeout", "20", "--bench_dir", str(tmp_path / "data"),
           "--bench_name", "mini", "--judge_file", str(judge_file), "--max_new_tokens", "4", "--chunk_size", "8",
           "--n_trials", "3", "--run_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "out"),
           "--judge_cache", str(tmp_path / "judge_cache.sqlite"), "--cache_dir", str(tmp_path / "hf"),
           "--log_level", "DEBUG"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1", **PLANTED))
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]

    # The key was really used (so it could have leaked) ...
    assert server.requests[0].headers["authorization"] == f"Bearer {PLANTED['OPENAI_API_KEY']}"
    # ... the outage failed the first trial with its reason, and the study still reached n_trials.
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].value is None
    assert "judg" in trials[0].user_attrs["fail_reason"].lower()
    assert len([t for t in trials if t.state in FINISHED]) == 3
    assert all(1 <= t.value <= 10 for t in trials if t.state == TrialState.COMPLETE)
    assert json.loads((tmp_path / "out" / "merge_recipe.json").read_text())["best"]["score"] >= 1

    # No planted secret in any file the run wrote (study db, records, caches, model dir, report) or its output.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "models" not in p.relative_to(tmp_path).parts]
    assert len(written) > 10
    for path in written:
        data = path.read_bytes()
        for value in PLANTED.values():
            assert value.encode() not in data, f"{value} leaked into {path}"
    for value in PLANTED.values():
        assert value not in done.stdout and value not in done.stderr
