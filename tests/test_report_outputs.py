"""A run's shareable outputs end to end: report, PNGs, model card, mergekit config (run through the real mergekit),
push to a local hub stand-in, and a run that never imports wandb."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hub_server import HubServer
from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A child interpreter in which `import wandb` fails, as on a machine without wandb.
NO_WANDB = "import sys; sys.modules['wandb'] = None; from task_vector_opt.cli.pipelines import JGLUE, script_main; script_main(JGLUE)"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One real 4-trial JGLUE run on tiny Llama models, pushed to a local hub, with wandb unimportable."""
    root = tmp_path_factory.mktemp("run")
    trio = make_trio(root / "models", "llama")
    out = root / "out"
    cmd = [sys.executable, "-c", NO_WANDB, "--target_model", str(trio["target"]), "--base_model", str(trio["base"]),
           "--tuned_model", str(trio["tuned"]), "--dtype", "float32", "--task_search_path", str(DEMO_TASKS),
           "--jglue_tasks", "demo_skill", "--jglue_limit", "8", "--jglue_holdout_limit", "8", "--n_trials", "4",
           "--optimize_mode", "layer", "--skip_embed", "--output_dir", str(out), "--run_dir", str(root / "run"),
           "--push_to_hub", "me/tiny-merge"]
    with HubServer(token="hf_test_dummy") as hub:
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_dummy",
                   HF_HUB_DISABLE_TELEMETRY="1")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return {"trio": trio, "out": out, "stdout": done.stdout, "stderr": done.stderr, "hub": hub}


def test_run_saves_report_plots_card_and_mergekit_config_beside_the_model(finished_run):
    out = finished_run["out"]
    names = {p.name for p in out.iterdir()}
    assert {"report.html", "optimization_history.png", "best_weights.png", "README.md", "mergekit_config.yml",
            "merge_recipe.json", "model.safetensors"} <= names
    assert not [n for n in names if n.startswith(".")]  # nothing half-written left behind
    for png in ("optimization_history.png", "best_weights.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC) and (out / png).stat().st_size > 5000
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('class="plotly-graph-div"') == 4 and "<script src=" not in page
    # The summary ends the run: w=0 / w=1 / best side by side, and the files beside the model.
    stdout = finished_run["stdout"]
    assert "w=0 (target unchanged)" in stdout and "w=1 (plain task vector)" in stdout and "search" in stdout
    assert "report.html" in stdout and "pushed to" in stdout


def test_model_card_metadata_parses_as_a_hugging_face_model_card(finished_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(finished_run["out"] / "README.md")
    assert {"merge", "task-vector"} <= set(card.data.tags)
    assert card.data.library_name == "transformers"
    assert card.data.to_dict().get("base_model") is None  # local directories are no hub ids: kept out of metadata
    recipe = json.loads((finished_run["out"] / "merge_recipe.json").read_text())
    for group, weight in recipe["weights"].items():
        assert f"| {group} | {weight:.4f} |" in card.text
    assert "![Optimization history](optimization_history.png)" in card.text


def test_pushed_repo_holds_the_saved_files_byte_for_byte(finished_run):
    hub, out = finished_run["hub"], finished_run["out"]
    assert hub.unexpected == []
    assert hub.created == [{"name": "tiny-merge", "organization": "me", "visibility": "public", "type": "model"}]
    uploaded = hub.repos["me/tiny-merge"]
    assert set(uploaded) == {p.name for p in out.iterdir()}
    for name in ("README.md", "model.safetensors", "report.html", "mergekit_config.yml"):
        assert uploaded[name] == (out / name).read_bytes(), name
    assert hub.validated and hub.validated[0] == (out / "README.md").read_text(encoding="utf-8")


def test_mergekit_reproduces_the_saved_merge_from_the_exported_config(finished_run, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    text = (finished_run["out"] / "mergekit_config.yml").read_text()
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    assert config.merge_method == "task_arithmetic"
    run_merge(config, str(tmp_path / "mk"), options=MergeOptions(device="cpu", lazy_unpickle=False, quiet=True))
    ours = load_file(finished_run["out"] / "model.safetensors")
    theirs = {}
    for file in (tmp_path / "mk").glob("*.safetensors"):
        theirs.update(load_file(file))
    assert set(theirs) == set(ours)
    target = load_file(finished_run["trio"]["target"] / "model.safetensors")
    for name, tensor in ours.items():
        torch.testing.assert_close(theirs[name], tensor, rtol=0, atol=1e-6, msg=name)
    # --skip_embed: the embeddings are the target's, through the catch-all weight 0
    assert torch.equal(ours["model.embed_tokens.weight"], target["model.embed_tokens.weight"])


def test_a_run_without_wandb_installed_succeeds_and_wandb_flag_then_fails_up_front(finished_run, tmp_path):
    assert finished_run["stdout"]  # the fixture's run had `import wandb` failing and still finished
    trio = finished_run["trio"]
    done = subprocess.run([sys.executable, "-c", NO_WANDB, "--target_model", str(trio["target"]), "--base_model",
                           str(trio["base"]), "--tuned_model", str(trio["tuned"]), "--output_dir",
                           str(tmp_path / "o"), "--wandb"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "--wandb" in done.stderr
    assert "pip install wandb" in done.stderr


@pytest.mark.parametrize("repo, env, expected", [
    ("not a repo id!", {"HF_TOKEN": "hf_x"}, "is not a Hugging Face repo id"),
    ("me/merge", {"HF_TOKEN": ""}, "no Hugging Face token"),
    ("me/merge", {"HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE"),
])
def test_push_to_hub_problems_stop_with_one_line_before_loading(finished_run, tmp_path, repo, env, expected):
    trio = finished_run["trio"]
    child_env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), **env)
    done = subprocess.run([sys.executable, str(ROOT / "merge_task_vector_jglue.py"), "--target_model",
                           str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model", str(trio["tuned"]),
                           "--output_dir", str(tmp_path / "o"), "--push_to_hub", repo],
                          capture_output=True, text=True, cwd=ROOT, env=child_env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "--push_to_hub" in done.stderr and expected in done.stderr
    assert not (tmp_path / "o").exists()
