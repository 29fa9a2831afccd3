"""What the VLM end-to-end tests share: running a launcher, its common flags, the run's study, and the check that
a saved VLM is exactly target + w * (tuned - base) in its language tensors and the target elsewhere."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from task_vector_opt.merging.grouping import group_names
from task_vector_opt.merging.models import WeightFiles
from task_vector_opt.merging.vlm import checkpoint_name

ROOT = Path(__file__).resolve().parent.parent


def run_launcher(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, **env))


def launcher_args(models: dict[str, Path], tmp_path: Path) -> list[str]:
    """The flags every VLM launcher test passes: the trio, CPU float32, two trials, the run's folders."""
    return ["--target_model", str(models["target"]), "--base_model", str(models["base"]), "--tuned_model",
            str(models["tuned"]), "--dtype", "float32", "--device", "cpu", "--n_trials", "2",
            "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"),
            "--cache_dir", str(tmp_path / "cache")]


def only_study(tmp_path: Path) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def assert_saved_vlm_is_target_plus_weighted_vector(models: dict[str, Path], out: Path, weights: dict[str, float],
                                                    model_class: type) -> dict[str, torch.Tensor]:
    """Language tensors: target + w * (tuned - base) for their group's w; everything else the target's bytes. The
    saved model loads with its own class and the auto class, and has a processor with an image processor and a
    chat template. Returns the target's parameters (for a caller's own checks)."""
    target = dict(model_class.from_pretrained(models["target"], dtype=torch.float32).named_parameters())
    for loader in (model_class, AutoModelForImageTextToText):
        assert type(loader.from_pretrained(out)) is model_class
    saved = dict(model_class.from_pretrained(out, dtype=torch.float32).named_parameters())
    base, tuned = WeightFiles(models["base"]), WeightFiles(models["tuned"])
    groups = group_names([n for n in target if checkpoint_name(n) is not None], "layer")
    for name, param in target.items():
        key = checkpoint_name(name)
        if key is None:
            assert torch.equal(saved[name], param), f"{name} changed"
            continue
        tau = tuned.get(key) - base.get(key)
        expected = param.detach().clone()
        expected[:tau.shape[0]] = torch.add(param[:tau.shape[0]], tau, alpha=weights[groups[name]])
        assert torch.equal(saved[name], expected), name
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor is not None and processor.chat_template
    return target
