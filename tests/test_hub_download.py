"""Models given as hub ids, through the real huggingface_hub against a local hub stand-in (HF_ENDPOINT) and the real
launcher script: safetensors only, into --cache_dir, reused with HF_HUB_OFFLINE=1; a repo that is unknown, gated or
on an unreachable hub gives one line and exit code 2, with --dry_run too, without retrying for half a minute."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hub_server import HubServer, closed_port_url, silent_hub
from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"
ROLES = ("target", "base", "tuned")
PLANTED_PICKLE = "pytorch_model.bin"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The stand-in serves me/target, me/base, me/tuned (each with a planted pickle beside its safetensors) and a
    gated copy of the tuned model, me/gated."""
    trio = make_trio(tmp_path_factory.mktemp("models"), "llama")
    with HubServer(token="hf_test_dummy") as server:
        for role in ROLES:
            (trio[role] / PLANTED_PICKLE).write_bytes(b"pickled weights that a merge must never download")
            server.serve_model(f"me/{role}", trio[role])
        server.serve_model("me/gated", trio["tuned"], gated=True)
        server.trio = trio
        yield server


def command(root: Path, *extra: str, target: str = "me/target", base: str = "me/base", tuned: str = "me/tuned",
            cache: Path | None = None) -> list[str]:
    return [sys.executable, str(ROOT / "merge_task_vector_jglue.py"), "--target_model", target, "--base_model", base,
            "--tuned_model", tuned, "--cache_dir", str(cache or root / "cache"), "--dtype", "float32", "--skip_embed",
            "--task_search_path", str(DEMO_TASKS), "--jglue_tasks", "demo_skill", "--jglue_limit", "4",
            "--jglue_holdout_limit", "4", "--n_trials", "2", "--output_dir", str(root / "out"),
            "--run_dir", str(root / "run"), *extra]


def run(cmd: list[str], endpoint: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a launcher with a private HF_HOME, so no token or cache of this machine takes part."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env = dict(inherited, OMP_NUM_THREADS="1", HF_ENDPOINT=endpoint, HF_HOME=str(home),
                    HF_HUB_DISABLE_TELEMETRY="1", **env)
    # a hang (an unbounded wait on a silent hub) fails the test through this timeout
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def downloaded(hub, tmp_path_factory):
    """One real run on hub ids; the stand-in records every file it sends."""
    root = tmp_path_factory.mktemp("online")
    done = run(command(root), hub.url, root / "hf_home")
    assert done.returncode == 0, done.stderr[-4000:]
    return root


def test_run_on_hub_ids_downloads_only_safetensors_config_and_tokenizer_into_cache_dir(hub, downloaded):
    assert hub.unexpected == []
    sent = set(hub.downloads)
    assert {f"me/{role}/model.safetensors" for role in ROLES} <= sent
    assert {f"me/{role}/config.json" for role in ROLES} <= sent
    assert not [name for name in sent if name.endswith(".bin")]
    cache = downloaded / "cache"
    assert not list(cache.rglob("*.bin"))
    for role in ROLES:
        snapshot = cache / f"models--me--{role}" / "snapshots" / hub.commit(f"me/{role}")
        assert (snapshot / "model.safetensors").read_bytes() == (hub.trio[role] / "model.safetensors").read_bytes()
    assert not (downloaded / "hf_home" / "hub").exists()  # --cache_dir, not the default cache, received them
    recipe = json.loads((downloaded / "out" / "merge_recipe.json").read_text())
    assert "me/tuned" in json.dumps(recipe)


def test_second_run_with_hf_hub_offline_uses_the_cache_without_a_single_request(hub, downloaded):
    root = downloaded / "offline"
    requests_before = len(hub.requests)
    done = run(command(root, cache=downloaded / "cache"), hub.url, downloaded / "hf_home", HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-4000:]
    assert hub.requests[requests_before:] == []
    online, offline = load_file(downloaded / "out" / "model.safetensors"), load_file(root / "out" / "model.safetensors")
    assert online.keys() == offline.keys()
    assert all(online[name].equal(offline[name]) for name in online)


def test_offline_run_of_a_repo_missing_from_the_cache_is_one_line(hub, downloaded, tmp_path):
    done = run(command(tmp_path, "--dry_run", tuned="me/never-downloaded", cache=downloaded / "cache"), hub.url,
               tmp_path / "hf_home", HF_HUB_OFFLINE="1")
    assert_one_line_error(done, "--tuned_model", "'me/never-downloaded'", "HF_HUB_OFFLINE is set")


def assert_one_line_error(done: subprocess.CompletedProcess, flag: str, *fragments: str) -> None:
    """Exit code 2, no traceback, no retry loop, and one 'error:' line, the last one, naming the flag and the cause."""
    assert done.returncode == 2, done.stderr[-4000:]
    assert "Traceback" not in done.stderr and "Retrying in" not in done.stderr, done.stderr[-4000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr[-4000:]
    assert errors[0].startswith(f"error: {flag}: "), errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "run"])
def test_unknown_repo_is_one_line_naming_the_flag_and_the_id(hub, tmp_path, dry_run):
    done = run(command(tmp_path, *(["--dry_run"] if dry_run else []), tuned="me/no-such-model"), hub.url,
               tmp_path / "hf_home")
    assert_one_line_error(done, "--tuned_model", "'me/no-such-model'", "no such repo")


@pytest.mark.parametrize("dry_run, token", [(True, None), (False, "hf_test_dummy")], ids=["dry_run-401", "run-403"])
def test_gated_repo_is_one_line_saying_how_to_get_access(hub, tmp_path, dry_run, token):
    done = run(command(tmp_path, *(["--dry_run"] if dry_run else []), base="me/gated"), hub.url, tmp_path / "hf_home",
               **({"HF_TOKEN": token} if token else {}))
    assert_one_line_error(done, "--base_model", "'me/gated'", "gated", "HF_TOKEN")
    assert not [name for name in hub.downloads if name.startswith("me/gated/")]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "run"])
def test_unreachable_hub_fails_at_once_in_one_line(tmp_path, dry_run):
    endpoint = closed_port_url()
    done = run(command(tmp_path, *(["--dry_run"] if dry_run else [])), endpoint, tmp_path / "hf_home")
    assert_one_line_error(done, "--target_model", "'me/target'", f"the hub at {endpoint} cannot be reached")


def test_silent_hub_is_given_up_after_hf_hub_etag_timeout(tmp_path):
    with silent_hub() as endpoint:
        done = run(command(tmp_path, "--dry_run"), endpoint, tmp_path / "hf_home", HF_HUB_ETAG_TIMEOUT="2")
    assert_one_line_error(done, "--target_model", f"the hub at {endpoint} did not answer within 2 s")
