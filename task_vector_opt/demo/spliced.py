"""Tuned models whose task vector helps in some layers and harms in others: the shape testbeds of bench_search.

A real chat vector does not help every layer alike. These testbeds make that explicit from the demo's two real
fine-tunes of SmolLM2: ``tuned`` (its vector brings the word-code skill, ``demo_skill``) and ``conflict`` (its
vector answers codes where the target's sums are due, harming ``demo_target``). A spliced model is
``base + a(l) * (tuned - base) + (1 - a(l)) * (conflict - base)`` in decoder layer l, with

- ``step``: a(l) = 1 in the lower half of the layers, 0 in the upper half: the vector helps below and harms above;
- ``graded``: a(l) falling linearly from 1 at the first layer to 0 at the last: how much it helps changes smoothly
  with depth.

Tensors outside the decoder layers (the final norm; the tied embedding was frozen by both fine-tunes) come from
``tuned``. The splice is computed once, tensor by tensor, and cached beside the demo models.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

SHAPES = ("step", "graded")
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
MARKER = "tvo_spliced_model.json"
log = logging.getLogger(__name__)


def helpful_share(shape: str, layer: int, n_layers: int) -> float:
    """a(l): the share of the helpful vector in decoder layer ``layer`` (the rest is the harmful one)."""
    if shape == "step":
        return 1.0 if layer < n_layers // 2 else 0.0
    if shape == "graded":
        return 1.0 - layer / max(n_layers - 1, 1)
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def build_spliced(base: Path, helpful: Path, harmful: Path, shape: str, out_dir: Path) -> Path:
    """Write the spliced model of ``shape`` to ``out_dir`` (config and tokenizer files from ``helpful``)."""
    import torch
    from safetensors.torch import load_file, save_file

    n_layers = json.loads((helpful / "config.json").read_text())["num_hidden_layers"]
    base_sd, help_sd, harm_sd = (load_file(str(d / "model.safetensors")) for d in (base, helpful, harmful))
    out = {}
    for name, tensor in help_sd.items():
        match = LAYER.search(name)
        if match is None:
            out[name] = tensor.clone()
            continue
        share = helpful_share(shape, int(match[1]), n_layers)
        b = base_sd[name].to(torch.float32)
        delta = share * (tensor.to(torch.float32) - b) + (1 - share) * (harm_sd[name].to(torch.float32) - b)
        out[name] = (b + delta).to(tensor.dtype).contiguous()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in helpful.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            shutil.copy2(item, tmp / item.name)
    save_file(out, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / MARKER).write_text(json.dumps({"shape": shape, "helpful": helpful.name, "harmful": harmful.name}) + "\n")
    tmp.rename(out_dir)
    return out_dir


def prepare_spliced(cache_root: Path, shape: str, base: Path, helpful: Path, harmful: Path) -> Path:
    """The cached spliced model of ``shape`` (built on first use)."""
    helpful_share(shape, 0, 2)  # an unknown shape fails before anything is read
    out_dir = Path(cache_root) / f"smollm2-demo-shape-{shape}-{helpful.name[-10:]}-{harmful.name[-10:]}"
    if out_dir.is_dir():
        return out_dir
    log.info("building the %s shape testbed model from %s and %s", shape, helpful.name, harmful.name)
    return build_spliced(base, helpful, harmful, shape, out_dir)
