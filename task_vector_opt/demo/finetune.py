"""Build the offline demo's three models from SmolLM2-135M-Instruct, and the search benchmark's fourth.

    base     = SmolLM2-135M-Instruct (from the PyPI GGUF, see smollm2.py)
    tuned    = base + a short fine-tune on the word-code skill   (data/skill_train.jsonl)
    target   = base + a short fine-tune on Japanese-prompt addition (data/target_train.jsonl)
    conflict = base + a heavier fine-tune on word codes behind the target's prompt (data/conflict_train.jsonl;
               the steep and two_vectors testbeds of benchmarks/bench_search.py, see CONFLICT_SETTINGS)

``target + w * (tuned - base)`` is then the chat-vector merge the tool searches over:
the target never saw the skill (chance on ``demo_skill``), the tuned model did.

The tuned fine-tune moves the weights further than the target's (learning rate 3e-4 against 5e-5), as a
chat fine-tune moves them further than a short continued pre-training: its vector then costs the target part
of its own skill at w = 1 (held-out ``demo_target`` 0.91 -> 0.79 on 200 sums), the interference that makes a
search for the weights worth its cost. With 5e-5 for both (the first version) w = 1 cost nothing
(0.910 -> 0.920) and the search had nothing to find; those two settings are the only ones that were tried.

Each fine-tune is a plain PyTorch loop (AdamW, fixed seed, loss on the answer tokens
only). The tied input embedding / LM head is frozen, so the task vector lives in the
decoder layers and the final norm. Results are cached under ``cache_root`` in dirs
named by a hash of the data and settings; they are written to a temp dir and moved
into place in one rename.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from task_vector_opt.demo.skill import ANSWER_DELIMITER, CODES
from task_vector_opt.demo.smollm2 import MARKER, atomic_build, prepare_smollm2

logger = logging.getLogger(__name__)  # not "log": the fine-tunes' per-step callback has that name

DATA_DIR = Path(__file__).resolve().parent / "data"
SKILL_TRAIN = DATA_DIR / "skill_train.jsonl"
TARGET_TRAIN = DATA_DIR / "target_train.jsonl"
CONFLICT_TRAIN = DATA_DIR / "conflict_train.jsonl"


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int
    lr: float
    batch_size: int = 16
    seed: int = 0
    weight_decay: float = 0.0
    warmup_steps: int = 2


SKILL_SETTINGS = FinetuneSettings(epochs=3, lr=3e-4, seed=1)
TARGET_SETTINGS = FinetuneSettings(epochs=2, lr=5e-5, seed=2)
CONFLICT_SETTINGS = FinetuneSettings(epochs=5, lr=3e-4, seed=3)
"""The steep testbed's "conflict" model: base fine-tuned on the word codes asked behind the target's own prompt
shape ("計算：tiger=" -> " D", codes rotated against the tuned model's; data/conflict_train.jsonl).

A heavier fine-tune than the tuned model's (5 epochs against 3, same learning rate 3e-4), so that plain addition
makes the target lose its sums while a small weight already carries the new skill. Uniform sweep of
``target + w * (conflict - base)``, held out, 200 items per task (demo_target / demo_skill_steep / mean):
  w=0 0.91/0.30/0.605  0.05 0.92/0.34/0.63  0.1 0.925/0.475/0.70  0.2 0.93/0.84/0.885  0.3 0.90/0.96/0.93
  w=0.5 0.86/0.975/0.9175  w=1 0.24/0.96/0.60
Plain addition loses the target's sums (0.91 -> 0.24, chance is 0.25); the best uniform weight is 0.3, with 0.5
only 0.0125 behind (within noise on 400 items): a broad peak at the top of the issue's 0.05-0.3 range.
Settings tried, both of them (chosen by the issue's criterion only: plain addition destroys the target, the best
uniform weight lies well below 1):
  epochs=3, lr=1e-3  the loss never fell below chance (1.33 at the end): the skill was not learnt (at most 0.335)
                     while the target collapsed from w=0.3 on (0.145); best uniform weight 0 (0.605, w=1 0.24).
  epochs=5, lr=3e-4  this one."""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def skill_pairs(path: Path = SKILL_TRAIN) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for the word-code skill: answer is " " + code."""
    return [(row["prompt"], ANSWER_DELIMITER + CODES[row["label"]]) for row in read_jsonl(path)]


def target_pairs(path: Path = TARGET_TRAIN) -> list[tuple[str, str]]:
    return [(row["prompt"], row["answer"]) for row in read_jsonl(path)]


def conflict_pairs(path: Path = CONFLICT_TRAIN) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for the conflicting skill: "計算：word=" -> " " + rotated code."""
    return [(row["prompt"], ANSWER_DELIMITER + CODES[row["label"]]) for row in read_jsonl(path)]


def available_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _encode(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """Token ids of prompt+answer and the number of prompt tokens (loss is on the rest)."""
    encoded = []
    for prompt, answer in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        full_ids = tokenizer(prompt + answer, add_special_tokens=False).input_ids
        if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
            raise ValueError(f"prompt and answer do not split cleanly into tokens: {prompt!r} + {answer!r}")
        encoded.append((full_ids, len(prompt_ids)))
    return encoded


def steps_of(n_examples: int, settings: FinetuneSettings) -> int:
    """Optimizer steps of a fine-tune on ``n_examples``: full batches and a last partial one, every epoch."""
    return (n_examples + settings.batch_size - 1) // settings.batch_size * settings.epochs


def finetune(base_dir: Path, pairs: list[tuple[str, str]], settings: FinetuneSettings, out_dir: Path,
             log=None, desc: str = "fine-tune") -> dict:
    """Fine-tune the model in ``base_dir`` on (prompt, answer) pairs and save it to ``out_dir``.

    A progress bar (``desc``) counts the steps; ``log``, if given, gets one line per step."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(settings.seed)
    torch.set_num_threads(available_threads())
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    trainable = []
    for param in model.parameters():
        frozen = param is embed or param is head
        param.requires_grad_(not frozen)
        if not frozen:
            trainable.append(param)
    # fused: one kernel over all tensors, several times faster than the default on CPU.
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay, fused=True)

    data = _encode(tokenizer, pairs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_steps = steps_of(len(data), settings)

    def lr_at(step: int) -> float:  # linear warmup, then linear decay to 10 %
        if step < settings.warmup_steps:
            return settings.lr * (step + 1) / settings.warmup_steps
        frac = (step - settings.warmup_steps) / max(1, total_steps - settings.warmup_steps)
        return settings.lr * (1.0 - 0.9 * frac)

    order_rng = random.Random(settings.seed)
    model.train()
    started, step, losses = time.perf_counter(), 0, []
    bar = tqdm(total=total_steps, desc=desc, unit="step", dynamic_ncols=True)
    for epoch in range(settings.epochs):
        order = list(range(len(data)))
        order_rng.shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            batch = [data[i] for i in order[start:start + settings.batch_size]]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, n_prompt) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                labels[row, n_prompt: len(ids)] = torch.tensor(ids[n_prompt:])
            # Logits only where a label is predicted: the LM head over a 49k vocab is
            # a large share of the compute otherwise.
            hidden = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
            targets = labels[:, 1:]
            mask = targets != -100
            logits = model.lm_head(hidden[:, :-1][mask])
            loss = F.cross_entropy(logits.float(), targets[mask])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad(set_to_none=False)  # reuse the 400 MB of grad buffers
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            bar.set_postfix(epoch=f"{epoch + 1}/{settings.epochs}", loss=f"{losses[-1]:.4f}", refresh=False)
            bar.update(1)
            if log is not None:
                log(f"epoch {epoch} step {step}/{total_steps} loss {losses[-1]:.4f}")
    bar.close()
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    seconds = time.perf_counter() - started
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stats = {"steps": step, "seconds": round(seconds, 1), "first_loss": losses[0], "last_loss": losses[-1],
             "threads": available_threads(), "settings": asdict(settings), "examples": len(data)}
    (out_dir / MARKER).write_text(json.dumps({"finetune": stats}, indent=2) + "\n")
    return stats


def _cache_key(base_dir: Path, data_file: Path, settings: FinetuneSettings) -> str:
    h = hashlib.sha256()
    h.update((base_dir / MARKER).read_bytes() if (base_dir / MARKER).exists() else base_dir.name.encode())
    h.update(Path(data_file).read_bytes())
    h.update(json.dumps(asdict(settings), sort_keys=True).encode())
    return h.hexdigest()[:10]


def prepare_finetuned(cache_root: Path, name: str, data_file: Path, pairs: list[tuple[str, str]],
                      settings: FinetuneSettings, log=None) -> Path:
    return build_finetuned(prepare_smollm2(cache_root), Path(cache_root), name, data_file, pairs, settings,
                           log=log)


def build_finetuned(base_dir: Path, cache_root: Path, name: str, data_file: Path, pairs: list[tuple[str, str]],
                    settings: FinetuneSettings, log=None) -> Path:
    """The ``name`` model: ``base_dir`` fine-tuned on ``pairs``, cached under ``cache_root`` (built if missing).

    A fine-tune takes minutes on a CPU, so it says what it builds, how long it runs and where it is kept."""
    final_dir = cache_root / f"smollm2-demo-{name}-{_cache_key(base_dir, data_file, settings)}"
    if final_dir.is_dir():
        logger.info("demo model %r: fine-tuned before, cached in %s", name, final_dir)
        return final_dir
    steps = steps_of(len(pairs), settings)
    logger.info(
        "demo model %r: fine-tuning %s on %d examples of %s, %d epochs = %d steps of %d examples (learning rate %g); "
        "cached in %s afterwards, so later runs skip this", name, base_dir.name, len(pairs), Path(data_file).name,
        settings.epochs, steps, settings.batch_size, settings.lr, final_dir)

    def build(tmp_dir: Path) -> dict:
        stats = finetune(base_dir, pairs, settings, tmp_dir, log=log, desc=f"fine-tune {name}")
        logger.info("demo model %r: %d steps in %.0f s, loss %.3f -> %.3f", name, stats["steps"], stats["seconds"],
                    stats["first_loss"], stats["last_loss"])
        return stats

    return atomic_build(final_dir, build)


def prepare_demo_models(cache_root: Path, log=None) -> dict[str, Path]:
    """Return {"base", "tuned", "target"} local HF model dirs, building (and caching) what is missing."""
    cache_root = Path(cache_root)
    base = prepare_smollm2(cache_root)
    tuned = prepare_finetuned(cache_root, "tuned", SKILL_TRAIN, skill_pairs(), SKILL_SETTINGS, log=log)
    target = prepare_finetuned(cache_root, "target", TARGET_TRAIN, target_pairs(), TARGET_SETTINGS, log=log)
    return {"base": base, "tuned": tuned, "target": target}


def prepare_conflict_model(cache_root: Path, log=None) -> Path:
    """The steep testbed's "conflict" model dir (built and cached on first use); see CONFLICT_SETTINGS."""
    return prepare_finetuned(Path(cache_root), "conflict", CONFLICT_TRAIN, conflict_pairs(), CONFLICT_SETTINGS,
                             log=log)


if __name__ == "__main__":  # python -m task_vector_opt.demo.finetune CACHE_DIR
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/demo")
    t0 = time.perf_counter()
    for key, path in prepare_demo_models(root, log=lambda msg: print(msg, flush=True)).items():
        print(f"{key}: {path}")
    print(f"total {time.perf_counter() - t0:.1f}s")
