"""HFLM against the context-once scorer (--mc_scorer) on the same requests and model, side by side in one run.

    python benchmarks/bench_scoring.py [--limit 40] [--batch_size 16] [--threads 1] [--repeats 1]

SmolLM2-135M-Instruct (float32, CPU) through the JGLUE evaluator's own path (JGLUEEvaluator._run: lm-eval's
evaluate on fixed documents), for each task: JGLUE-format JCommonsenseQA and JNLI with their default few-shot
prompts (ja_leaderboard, 3-shot; the data is benchmarks/jglue_format_data.py's, as no JGLUE data ships),
and the demo tasks (lm-evaluation-harness/demo, 0-shot). Per task and scorer it prints the positions the model
ran (padding included, counted on the model's forward), the seconds, the accuracy, and between the scorers the
largest log-likelihood difference and the greedy flags that agree. Timed runs alternate the scorers.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jglue_format_data import load_smollm2, write_jglue_format_copy  # noqa: E402

TASKS = "jcommonsenseqa-1.1-0.3,jnli-1.3-0.2,demo_skill,demo_target"


@dataclasses.dataclass
class Measured:
    seconds: list[float] = dataclasses.field(default_factory=list)
    positions: int = 0
    passes: int = 0
    accuracy: float = 0.0
    answers: dict = dataclasses.field(default_factory=dict)  # (context, continuation) -> (loglikelihood, greedy)


def recording(lm, answers: dict):
    """Keep every log-likelihood answer the scorer gives lm-eval (the instance's method, wrapped)."""
    real = lm.loglikelihood

    def loglikelihood(requests, disable_tqdm: bool = False):
        out = real(requests, disable_tqdm=disable_tqdm)
        answers.update({tuple(r.args): a for r, a in zip(requests, out, strict=True)})
        return out

    lm.loglikelihood = loglikelihood
    return lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="documents per task")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per scorer and task (best is shown)")
    args = parser.parse_args()

    import torch

    from task_vector_opt.evaluation.jglue import JGLUEEvaluator, jglue_settings_from_args

    model, tokenizer = load_smollm2(args.threads, ROOT / ".cache" / "demo")
    work = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    data_dir = write_jglue_format_copy(work / "JGLUE", n_valid=max(args.limit, 10))
    flags = argparse.Namespace(jglue_tasks=TASKS, jglue_limit=str(args.limit), jglue_num_fewshot=None,
                               jglue_holdout_limit="0", jglue_data_dir=str(data_dir),
                               task_search_path=str(ROOT / "lm-evaluation-harness" / "demo"),
                               batch_size=str(args.batch_size), mc_scorer="context_once", prune=False,
                               pruner=None, jglue_chunks=4)
    settings = jglue_settings_from_args(flags)
    scorers = ("hflm", "context_once")
    evaluators = {name: JGLUEEvaluator(dataclasses.replace(settings, mc_scorer=name), work / name)
                  for name in scorers}

    positions = [0, 0]  # (positions, passes) of the model's forward calls
    def count(_module, call_args, kwargs):
        ids = call_args[0] if call_args else kwargs["input_ids"]
        positions[0] += ids.numel()
        positions[1] += 1
    model.register_forward_pre_hook(count, with_kwargs=True)

    print(f"SmolLM2-135M-Instruct float32, CPU, {args.threads} thread(s), batch size {args.batch_size}, "
          f"{args.limit} documents per task, torch {torch.__version__}")
    header = (f"{'task':<24}{'shots':>6}{'requests':>9} | {'HFLM tokens':>11}{'s':>8}{'acc':>7} | "
              f"{'ctx-once tokens':>15}{'s':>8}{'acc':>7} | {'tokens':>7}{'speed':>7} | "
              f"{'max |dLL|':>9}{'greedy=':>9}")
    print(header)
    print("-" * len(header))
    totals = {name: [0, 0.0] for name in scorers}
    for i, run in enumerate(evaluators["hflm"].runs):
        measured = {name: Measured() for name in scorers}
        for repeat in range(args.repeats):
            for name in (scorers if repeat % 2 == 0 else scorers[::-1]):
                evaluator = evaluators[name]
                task_run = evaluator.runs[i]
                lm = recording(evaluator.lm_for(model, tokenizer), measured[name].answers)
                positions[:] = [0, 0]
                started = time.perf_counter()
                value, _ = evaluator._run(lm, task_run, task_run.search_docs)
                measured[name].seconds.append(time.perf_counter() - started)
                measured[name].positions, measured[name].passes = positions
                measured[name].accuracy = value
        hflm, once = measured["hflm"], measured["context_once"]
        assert hflm.answers.keys() == once.answers.keys()
        diff = max(abs(hflm.answers[k][0] - once.answers[k][0]) for k in hflm.answers)
        agree = sum(hflm.answers[k][1] == once.answers[k][1] for k in hflm.answers)
        h_s, o_s = min(hflm.seconds), min(once.seconds)
        for name, m in measured.items():
            totals[name][0] += m.positions
            totals[name][1] += min(m.seconds)
        print(f"{run.name:<24}{run.num_fewshot:>6}{len(hflm.answers):>9} | {hflm.positions:>11,}{h_s:>8.2f}"
              f"{hflm.accuracy:>7.3f} | {once.positions:>15,}{o_s:>8.2f}{once.accuracy:>7.3f} | "
              f"{once.positions / hflm.positions:>7.3f}{h_s / o_s:>6.2f}x | {diff:>9.1e}"
              f"{f'{agree}/{len(hflm.answers)}':>9}")
    (h_tokens, h_s), (o_tokens, o_s) = totals["hflm"], totals["context_once"]
    print(f"{'all tasks':<39} | {h_tokens:>11,}{h_s:>8.2f}{'':>7} | {o_tokens:>15,}{o_s:>8.2f}{'':>7} | "
          f"{o_tokens / h_tokens:>7.3f}{h_s / o_s:>6.2f}x |")
    print("tokens: positions the model ran, padding included; speed: HFLM's seconds / the context-once scorer's")


if __name__ == "__main__":
    main()
