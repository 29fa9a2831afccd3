"""One trial's evaluation time against the model's own forward passes over the same requests (goal: <= 1.3x).

    python benchmarks/bench_eval_overhead.py [--limit 16] [--batch_size 16] [--threads 1] [--mc_scorer context_once]

SmolLM2-135M-Instruct (float32, CPU), JGLUE-format JCommonsenseQA and JNLI (benchmarks/jglue_format_data.py,
3-shot) plus the demo tasks. A trial is what the engine runs: ``evaluator.score`` inside the logits guard.
Every forward call of that trial is recorded (its inputs, and a copy of the KV cache it was given) and then
replayed bare, under ``torch.no_grad``: that is the model's own time. The rest is split into the logits guard
(the same trial without it), tokenising (time inside the tokenizer's calls), task building (lm-eval's
``build_all_requests``: documents, few-shot prompts, Instances) and the remainder: lm-eval's bookkeeping
(evaluate: request lists, filters, metrics, per-sample logs) and the scorer's own Python.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jglue_format_data import load_smollm2, write_jglue_format_copy  # noqa: E402

TASKS = "jcommonsenseqa-1.1-0.3,jnli-1.3-0.2,demo_skill,demo_target"


@contextmanager
def timed_method(owner, name: str, spent: list[float]):
    """Add the seconds spent inside ``owner.name`` to ``spent[0]`` (outermost calls only)."""
    real = getattr(owner, name)
    depth = [0]

    def wrapper(*args, **kwargs):
        depth[0] += 1
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                spent[0] += time.perf_counter() - started

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, real)


def snapshot_cache(cache):
    """A copy of a KV cache as it is before a forward call (the call appends to it)."""
    if cache is None:
        return None
    copied = copy.copy(cache)
    copied.layers = [copy.copy(layer) for layer in cache.layers]
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=16, help="documents per task")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mc_scorer", default="context_once", choices=("context_once", "hflm"))
    args = parser.parse_args()

    import torch
    from lm_eval.api.task import Task

    from task_vector_opt.evaluation.finite import finite_logits_guard
    from task_vector_opt.evaluation.jglue import JGLUEEvaluator, jglue_settings_from_args

    model, tokenizer = load_smollm2(args.threads, ROOT / ".cache" / "demo")
    work = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    flags = argparse.Namespace(jglue_tasks=TASKS, jglue_limit=str(args.limit), jglue_num_fewshot=None,
                               jglue_holdout_limit="0",
                               jglue_data_dir=str(write_jglue_format_copy(work / "JGLUE", n_valid=args.limit)),
                               task_search_path=str(ROOT / "lm-evaluation-harness" / "demo"),
                               batch_size=str(args.batch_size), mc_scorer=args.mc_scorer, prune=False, pruner=None,
                               jglue_chunks=4)
    settings = jglue_settings_from_args(flags)
    evaluator = JGLUEEvaluator(settings, work / "tasks")

    def trial(guard: bool) -> float:
        started = time.perf_counter()
        with finite_logits_guard(model) if guard else nullcontext():
            evaluator.score(model, tokenizer)
        return time.perf_counter() - started

    trial(True)  # warm-up: lm-eval's first-call imports and caches, the tokenizer's

    calls: list[tuple[tuple, dict]] = []

    def record(_module, call_args, kwargs):
        kept = dict(kwargs)
        for name in ("cache", "past_key_values"):
            if kept.get(name) is not None:
                kept[name] = snapshot_cache(kept[name])
        calls.append((call_args, kept))

    tokenising, building = [0.0], [0.0]
    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with timed_method(type(tokenizer), "__call__", tokenising), timed_method(type(tokenizer), "encode", tokenising), \
                timed_method(Task, "build_all_requests", building):
            with_guard = trial(True)
    finally:
        handle.remove()
    without_guard = trial(False)

    started = time.perf_counter()
    with torch.no_grad():
        for call_args, kwargs in calls:
            model(*call_args, **kwargs)
    forward = time.perf_counter() - started

    guard = max(with_guard - without_guard, 0.0)
    rest = with_guard - forward - guard - tokenising[0] - building[0]
    print(f"SmolLM2-135M-Instruct float32, CPU, {args.threads} thread(s), batch size {args.batch_size}, "
          f"{args.limit} documents per task ({', '.join(settings.tasks)}), --mc_scorer {args.mc_scorer}, "
          f"torch {torch.__version__}")
    print(f"one trial (evaluator.score in the logits guard): {with_guard:8.2f} s")
    print(f"the model's forward passes replayed bare:         {forward:8.2f} s  ({len(calls)} calls)")
    print(f"overhead ratio:                                   {with_guard / forward:8.3f}x  (goal <= 1.3x)")
    for label, seconds in (("task building (build_all_requests)", building[0]), ("tokenising", tokenising[0]),
                           ("logits guard", guard), ("lm-eval bookkeeping and scorer Python", rest)):
        print(f"  {label:<40} {seconds:7.2f} s  {seconds / with_guard:6.1%} of the trial")


if __name__ == "__main__":
    main()
