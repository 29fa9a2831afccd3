"""Search strategies on the SmolLM2 testbed: held-out score, items scored and wall time per strategy, seed, budget.

    .venv/bin/python benchmarks/bench_search.py --seeds 0,1,2,3,4 --budgets 10,30,100 --strategies all

The testbeds (task_vector_opt/demo, built and cached on first use; --testbed picks one): target =
SmolLM2-135M-Instruct fine-tuned on Japanese-prompt addition (its own skill, demo_target), and
  interference  tuned = the same model fine-tuned on the word-code skill ("分類 tiger：", demo_skill): the best
                merge is close to plain addition, which costs the target part of its skill;
  steep         tuned = "conflict", a heavy fine-tune on word codes asked behind the target's own prompt shape
                ("計算：tiger=", demo_skill_steep): plain addition destroys the target's skill, the best uniform
                weight lies well below 1;
  two_vectors   two vectors, tuned (helps: demo_skill) and conflict (harms: answers codes where sums are due),
                scored on demo_target and demo_skill: the best merge drops (or nearly drops) the second.
Both skills are scored together as weighted lm-eval tasks, the search on the first --search_limit documents of
each task, the held-out score on the next --holdout_limit (disjoint).

It prints, in order:
  1. the interference: both skills on held-out documents for each --uniform_weights value (w = 0: the target,
     w = 1: plain addition); with two vectors, for every combination of one such weight per vector;
  2. one JSON line per run (strategy, seed, budget): the best trial's held-out score, its paired difference to
     w = 1 with the 95% bootstrap interval, items scored, trial-equivalents spent and wall time;
  3. a table per strategy and budget: held-out mean +- sd over seeds, items scored, wall time.

A budget is counted in trial-equivalents: one full search evaluation (every search document once). The two
baseline trials count; a pruned trial counts the share of the documents it scored. A run with budget B stops at
the first trial that reaches B. Proposals never depend on the budget, so each (strategy, seed) is searched once
to the largest budget and every smaller budget is read off that run's first trials: exactly the run a smaller
budget would have made. The model is loaded once; every run gets its own in-memory study.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORIGINAL_DEFAULT = "TPE/layer"


@dataclass(frozen=True)
class TestbedKind:
    tasks: str  # the target's own skill and the vectors' skill, equally weighted
    vectors: tuple[str, ...]  # demo models whose task vectors are merged, in --tuned_model order


TESTBEDS = {
    "interference": TestbedKind("demo_target:0.5,demo_skill:0.5", ("tuned",)),
    "steep": TestbedKind("demo_target:0.5,demo_skill_steep:0.5", ("conflict",)),
    "two_vectors": TestbedKind("demo_target:0.5,demo_skill:0.5", ("tuned", "conflict")),
    # the shape kinds (task_vector_opt/demo/spliced.py): one vector, helpful in some layers and harmful in others
    "shape_step": TestbedKind("demo_target:0.5,demo_skill:0.5", ("shape-step",)),
    "shape_graded": TestbedKind("demo_target:0.5,demo_skill:0.5", ("shape-graded",)),
}


@dataclass(frozen=True)
class Strategy:
    sampler: str
    mode: str  # optimize mode: layer or profile
    knots: int = 0
    pruner: str | None = None  # --prune with this pruner
    scale_first: bool = False  # --scale_search on
    objective: str = "task"  # --search_objective
    subset: float = 0.0  # --item_subset
    confirm: bool = True  # a new best by the estimate is scored on every document (as --item_subset does)

    @classmethod
    def parse(cls, name: str) -> "Strategy":
        """'CMA-ES/scale-profile4+median~choice_prob' -> CMA-ES sampler, --scale_search on, profile mode with 4
        knots, --prune --pruner median, --search_objective choice_prob (without ~: the task's own metric);
        a last '^subset0.33': --item_subset 0.33 ('^subset0.33/estimate_only': without the confirmation of a new best
        on every document, the ablation)."""
        name, _, subset = name.partition("^subset")
        subset, _, variant = subset.partition("/")
        if variant not in ("", "estimate_only"):
            raise SystemExit(f"--strategies: {name!r}: '^subset' variant {variant!r}; use ^subsetF or "
                             "^subsetF/estimate_only")
        rest, _, objective = name.partition("~")
        body, _, pruner = rest.partition("+")
        sampler, _, mode = body.partition("/")
        scale_first = mode.startswith("scale-")
        mode = mode.removeprefix("scale-")
        knots = 0
        if mode.startswith("profile"):
            knots = int(mode.removeprefix("profile") or 4)
            mode = "profile"
        if mode not in ("layer", "profile", "all", "parameter"):
            raise SystemExit(f"--strategies: {name!r} has no mode; write SAMPLER/[scale-]MODE[+PRUNER][~OBJECTIVE], "
                             "e.g. TPE/layer or CMA-ES/scale-profile4~choice_prob")
        if objective not in ("", "task", "choice_prob"):
            raise SystemExit(f"--strategies: {name!r}: objective {objective!r}; use task or choice_prob")
        return cls(sampler, mode, knots, pruner or None, scale_first, objective or "task", float(subset or 0),
                   variant != "estimate_only")


NEW_DEFAULT = "CMA-ES/scale-profile4"  # the tool's defaults: --scale_search on, --search_objective task
SMOOTH = "CMA-ES/scale-profile4~choice_prob"  # the same with --search_objective choice_prob
ALL_STRATEGIES = ["random/layer", "TPE/layer", "TPE-multivariate/layer", "CMA-ES/layer", "GP/layer",
                  "random/profile4", "TPE/profile4", "CMA-ES/profile4", "GP/profile4", "TPE/profile4+median",
                  "CMA-ES/profile4+successive_halving", NEW_DEFAULT, SMOOTH]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=f"random/layer,{ORIGINAL_DEFAULT},CMA-ES/profile4,{NEW_DEFAULT}",
                        help=f"comma-separated SAMPLER/MODE[+PRUNER] names, or 'all' ({', '.join(ALL_STRATEGIES)})")
    parser.add_argument("--seeds", default="0", help="comma-separated sampler seeds")
    parser.add_argument("--budgets", default="10", help="comma-separated budgets in trial-equivalents")
    parser.add_argument("--search_limit", type=int, default=100, help="search documents per task")
    parser.add_argument("--holdout_limit", type=int, default=200, help="held-out documents per task")
    parser.add_argument("--chunks", type=int, default=4, help="chunks of the search documents (pruned strategies)")
    parser.add_argument("--batch_size", default="32")
    parser.add_argument("--testbed", choices=sorted(TESTBEDS), default="interference",
                        help="which testbed kind: models and tasks (see the module docstring)")
    parser.add_argument("--cache", default=os.environ.get("TVO_CACHE") or str(ROOT / ".cache" / "demo"))
    parser.add_argument("--out", help="also append the JSON lines to this file")
    for role in ("target", "base", "tuned"):  # another trio instead of the testbed's (e.g. tiny models to smoke-test)
        parser.add_argument(f"--{role}_model", help=f"{role} model directory instead of the testbed's"
                            + (" (several: comma-separated)" if role == "tuned" else ""))
    parser.add_argument("--interference_only", action="store_true", help="print the testbed's interference and stop")
    parser.add_argument("--uniform_weights", default="0,1",
                        help="uniform weights whose held-out skills the interference line shows (must include 0 and "
                             "1); with two vectors, every combination of one per vector")
    return parser.parse_args(argv)


def jglue_flags(models: dict[str, Path], args: argparse.Namespace, run_dir: Path) -> list[str]:
    return ["--target_model", str(models["target"]), "--base_model", str(models["base"]),
            "--tuned_model", ",".join(str(path) for path in models["tuned"]),
            "--task_search_path", str(ROOT / "lm-evaluation-harness" / "demo"),
            "--jglue_tasks", TESTBEDS[args.testbed].tasks, "--jglue_limit", str(args.search_limit),
            "--jglue_holdout_limit", str(args.holdout_limit), "--batch_size", args.batch_size,
            # float32: the fine-tunes' deltas are small; --skip_embed: the fine-tunes froze the tied embedding
            "--dtype", "float32", "--device", "cpu", "--skip_embed", "--log_level", "WARNING",
            "--optimize_mode", "layer",  # the merger's groups; each strategy builds its own space over them
            "--output_dir", str(run_dir / "unused"), "--run_dir", str(run_dir)]


class Testbed:
    """The live model, its merger and one evaluator per pruning setting, loaded once for every run."""

    def __init__(self, args: argparse.Namespace):
        import tempfile

        from task_vector_opt import engine
        from task_vector_opt.cli.flags import parse_namespace
        from task_vector_opt.cli.pipelines import JGLUE
        from task_vector_opt.cli.validation import validate
        from task_vector_opt.demo.finetune import prepare_conflict_model, prepare_demo_models
        from task_vector_opt.demo.spliced import prepare_spliced

        self.args = args
        given = {role: getattr(args, f"{role}_model") for role in ("target", "base", "tuned")}
        if any(given.values()) and not all(given.values()):
            raise SystemExit("--target_model, --base_model and --tuned_model go together")
        if all(given.values()):
            self.models = {"target": Path(given["target"]), "base": Path(given["base"]),
                           "tuned": [Path(p) for p in given["tuned"].split(",")]}
        else:
            demo = prepare_demo_models(Path(args.cache))
            vectors = TESTBEDS[args.testbed].vectors
            if any(name == "conflict" or name.startswith("shape-") for name in vectors):
                demo["conflict"] = prepare_conflict_model(Path(args.cache))
            for name in vectors:
                if name.startswith("shape-"):
                    demo[name] = prepare_spliced(Path(args.cache), name.removeprefix("shape-"), demo["base"],
                                                 demo["tuned"], demo["conflict"])
            self.models = {"target": demo["target"], "base": demo["base"],
                           "tuned": [demo[name] for name in TESTBEDS[args.testbed].vectors]}
        self.run_dir = Path(tempfile.mkdtemp(prefix="bench_search_"))
        namespace = parse_namespace(JGLUE.command_line, jglue_flags(self.models, args, self.run_dir))
        self.config = validate(JGLUE, namespace)
        self.ws = engine.prepare(self.config)
        self._evaluators: dict[str | None, object] = {}
        self._holdout: dict[tuple, object] = {}

    def evaluator(self, pruner: str | None, objective: str = "task", subset: float = 0.0, confirm: bool = True):
        import dataclasses

        from task_vector_opt.evaluation.jglue import JGLUEEvaluator

        if (pruner, objective, subset, confirm) not in self._evaluators:
            settings = dataclasses.replace(self.config.evaluator, pruner=pruner, objective=objective,
                                           chunks=self.args.chunks if pruner else 1, item_subset=subset,
                                           item_subset_confirm=confirm)
            evaluator = JGLUEEvaluator(settings, self.run_dir / "lm_eval_tasks")
            # Without pruning a score depends only on the merge: runs share the merges they have in common (the
            # baselines, the scale stage's design) instead of scoring them again.
            self._evaluators[pruner, objective, subset, confirm] = (evaluator if pruner else
                                                                    SharedScores(evaluator, self.ws.merger))
        return self._evaluators[pruner, objective, subset, confirm]

    @property
    def full_items(self) -> int:
        return sum(len(run.search_docs) for run in self.evaluator(None).runs)

    def holdout(self, weights: dict[str, float]):
        """Held-out Score of ``weights`` (cached: w = 0 and w = 1 are the same in every run)."""
        key = tuple(sorted(weights.items()))
        if key not in self._holdout:
            self.ws.merger.apply(weights)
            self._holdout[key] = self.evaluator(None).holdout(self.ws.model, self.ws.tokenizer)
        return self._holdout[key]


class SharedScores:
    """An evaluator that scores each merge once per benchmark. A repeated merge gets the first score, with the
    seconds that scoring took (``eval_s``), so each run's wall time is what it would have spent alone."""

    def __init__(self, evaluator, merger):
        self.evaluator = evaluator
        self.merger = merger
        self.settings = evaluator.settings
        self.pruner = evaluator.pruner
        self.runs = evaluator.runs
        self._scores: dict[tuple, tuple] = {}

    def score(self, model, tokenizer, trial=None):
        import dataclasses

        # a merge scored on the item subset is another score than the same merge scored in full
        key = (tuple(sorted(self.merger.current.items())), self.evaluator.subset_for(trial) is not None)
        if key not in self._scores:
            started = time.perf_counter()
            result = self.evaluator.score(model, tokenizer, trial)
            self._scores[key] = (result, time.perf_counter() - started)
        result, seconds = self._scores[key]
        return dataclasses.replace(result, details={**result.details, "eval_s": round(seconds, 3)})

    def holdout(self, model, tokenizer):
        return self.evaluator.holdout(model, tokenizer)

    def describe(self) -> str:
        return self.evaluator.describe()


def vector_of(group: str) -> str:
    """The task vector a weight belongs to: "v2" for "v2/layer_07"; "" for a single vector's plain names."""
    head, slash, _ = group.partition("/")
    return head if slash and head[:1] == "v" and head[1:].isdigit() else ""


def uniform_label(values: tuple[float, ...]) -> str:
    """"w=0.5" for one vector; "w=0.25,1" for two (the first vector's weight, then the second's)."""
    return "w=" + ",".join(f"{value:g}" for value in values)


def uniform_grid(groups: list[str], values: list[float]) -> dict[str, dict[str, float]]:
    """Every combination of one uniform weight per task vector, by label."""
    vectors = list(dict.fromkeys(vector_of(group) for group in groups))
    grid = {}
    for combo in itertools.product(values, repeat=len(vectors)):
        per_vector = dict(zip(vectors, combo))
        grid[uniform_label(combo)] = {group: per_vector[vector_of(group)] for group in groups}
    return grid


def interference(bed: Testbed, uniform_weights: list[float]) -> dict:
    """Both skills on held-out documents for each uniform weight (w = 0: the target, w = 1: plain addition);
    with several vectors, for each combination of one uniform weight per vector."""
    out = {}
    for label, weights in uniform_grid(bed.ws.group_order, uniform_weights).items():
        score = bed.holdout(weights)
        out[label] = {"score": score.value, **score.details}
    return out


def reference_merges(bed: Testbed, scales: list[float]) -> dict:
    """The shape kinds' per-layer reference: layer l at c * a(l), a(l) the helpful vector's share of layer l
    (task_vector_opt/demo/spliced.py), the other groups at c; held out, for each c in ``scales``."""
    from task_vector_opt.demo.spliced import helpful_share
    from task_vector_opt.merging.grouping import LAYER_GROUP

    shape = TESTBEDS[bed.args.testbed].vectors[0].removeprefix("shape-")
    layers = {g: int(LAYER_GROUP.match(g)["index"]) for g in bed.ws.group_order if LAYER_GROUP.match(g)}
    n_layers = max(layers.values()) + 1
    out = {}
    for c in scales:
        weights = {g: c * helpful_share(shape, layers[g], n_layers) if g in layers else c for g in bed.ws.group_order}
        score = bed.holdout(weights)
        out[f"c={c:g}"] = {"score": score.value, **score.details}
    return out


# Rules for the declared best, by the paired interval a shape-stage trial must clear over the best scale ("highest":
# none, the highest search score wins). The engine's default (search.selection.SELECTION_CONFIDENCE) is the plain
# strategy name; the others get "@rule".
SELECTION_RULES = {"paired95": 0.95, "paired80": 0.80, "highest": 0.0}


def budget_prefix(trials: list, full_items: int, budget: float) -> list:
    """The trials a run with this budget would have made: up to the first whose cumulative items reach it.

    A sampler's proposals depend only on the trials before them, never on the budget, so one run to the largest
    budget holds every smaller budget's run as a prefix (same seed, same proposals, same scores)."""
    spent = 0
    for index, trial in enumerate(trials):
        spent += trial.user_attrs.get("items_scored", 0)
        if spent >= budget * full_items - 1e-9:
            return trials[: index + 1]
    return list(trials)


def run_one(bed: Testbed, name: str, seed: int, budgets: list[float]) -> list[dict]:
    """One search to the largest budget, through the engine's own study and loop (what users run); one row per
    budget, from that budget's prefix of the trials."""
    import dataclasses

    import optuna

    from task_vector_opt import engine
    from task_vector_opt.engine import label_of
    from task_vector_opt.search.selection import SELECTION_CONFIDENCE, chosen_trial
    from task_vector_opt.search.study import FINISHED
    from task_vector_opt.search.verdict import holdout_verdict

    strategy = Strategy.parse(name)
    evaluator = bed.evaluator(strategy.pruner, strategy.objective, strategy.subset, strategy.confirm)
    config = dataclasses.replace(bed.config, sampler=strategy.sampler, seed=seed, optimize_mode=strategy.mode,
                                 profile_knots=strategy.knots, scale_first=strategy.scale_first,
                                 evaluator=evaluator.settings, n_trials=10_000, study_name=f"{name}-{seed}")
    space = engine.space_of(config, bed.ws)
    full = bed.full_items
    largest = max(budgets)
    study = engine.open_search_study(config, optuna.storages.InMemoryStorage(), bed.ws, evaluator, space)

    def spent(study_: optuna.Study) -> bool:
        done = study_.get_trials(deepcopy=False, states=FINISHED)
        return sum(t.user_attrs.get("items_scored", 0) for t in done) >= largest * full - 1e-9

    engine.search(config, study, bed.ws, evaluator, (), space, done=spent)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in (*FINISHED, optuna.trial.TrialState.FAIL)]
    default_rule = {confidence: rule for rule, confidence in SELECTION_RULES.items()}[SELECTION_CONFIDENCE]
    rows = []
    for budget, (rule, confidence) in itertools.product(budgets, SELECTION_RULES.items()):
        prefix = budget_prefix(trials, full, budget)
        # the run's declared best as the engine declares it (search.selection), and as other rules would: one
        # search, so the rules are compared on the same trials
        best = chosen_trial(prefix, confidence)
        best_weights = space.weights(best.params)
        candidates = {"w=0": dict.fromkeys(space.groups, 0.0), "w=1": dict.fromkeys(space.groups, 1.0)}
        if best_weights not in candidates.values():
            candidates[f"trial {best.number}"] = best_weights
        best_label = label_of(candidates, best_weights)
        held = {label: bed.holdout(weights) for label, weights in candidates.items()}
        verdict = holdout_verdict({label: s.item_values for label, s in held.items()}, best_label)
        items = sum(t.user_attrs.get("items_scored", 0) for t in prefix)
        rows.append({
            "testbed": bed.args.testbed, "strategy": name + ("" if rule == default_rule else f"@{rule}"),
            "selection": rule, "seed": seed, "budget": budget,
            "trial_equivalents": round(items / full, 3),
            "items_scored": items, "trials": len(prefix),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in prefix),
            "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in prefix),
            "best_trial": best.number, "best_search": best.value, "best_weights": best_weights,
            "best_params": best.params,
            "holdout_best": held[best_label].value, "holdout_details": held[best_label].details,
            "holdout_w1": held["w=1"].value, "holdout_w0": held["w=0"].value,
            "vs_w1": verdict.get("vs w=1"), "vs_w0": verdict.get("vs w=0"), "verdict": verdict["sentences"][0] if verdict["sentences"] else "",
            # seconds of evaluation the run spent (a merge scored before by another run counts what it cost then)
            "wall_s": round(sum(t.user_attrs.get("eval_s", t.user_attrs.get("elapsed_s", 0.0)) for t in prefix), 1),
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'strategy':<36} {'budget':>6} {'seeds':>5} {'held-out mean':>13} {'sd':>6} {'beats w=1':>9} "
             f"{'items':>7} {'wall s':>7}"]
    keys = sorted({(r["strategy"], r["budget"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for strategy, budget in keys:
        group = [r for r in rows if r["strategy"] == strategy and r["budget"] == budget]
        values = [r["holdout_best"] for r in group]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        beats = sum(1 for r in group if r["vs_w1"] and r["vs_w1"]["low"] > 0)
        lines.append(f"{strategy:<36} {budget:>6g} {len(group):>5} {statistics.fmean(values):>13.4f} {sd:>6.3f} "
                     f"{beats:>5}/{len(group):<3} {statistics.fmean(r['items_scored'] for r in group):>7.0f} "
                     f"{statistics.fmean(r['wall_s'] for r in group):>7.0f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    strategies = ALL_STRATEGIES if args.strategies == "all" else [s for s in args.strategies.split(",") if s]
    for name in strategies:
        Strategy.parse(name)  # bad names fail before the models load
    uniform = [float(w) for w in args.uniform_weights.split(",")]
    if 0.0 not in uniform or 1.0 not in uniform:
        raise SystemExit(f"--uniform_weights {args.uniform_weights!r}: include 0 and 1 (the target and plain addition)")
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]

    started = time.perf_counter()
    bed = Testbed(args)
    print(f"# testbed {args.testbed} ready in {time.perf_counter() - started:.0f}s: {bed.evaluator(None).describe()}",
          flush=True)
    effect = interference(bed, uniform)
    print(json.dumps({"interference": effect}), flush=True)
    if args.testbed.startswith("shape_"):
        print(json.dumps({"per_layer_reference": reference_merges(bed, [0.25, 0.5, 0.75, 1.0])}), flush=True)
    if args.interference_only:
        return
    rows = []
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    try:
        for name in strategies:
            for seed in seeds:
                for row in run_one(bed, name, seed, budgets):
                    rows.append(row)
                    line = json.dumps(row)
                    print(line, flush=True)
                    if out:
                        out.write(line + "\n")
                        out.flush()
    finally:
        if out:
            out.close()
    print()
    zero, one = (uniform_label((value,) * len(bed.models["tuned"])) for value in (0.0, 1.0))
    print(f"held-out (both skills, {args.holdout_limit} documents each): w=0 {effect[zero]['score']:.4f}, "
          f"w=1 {effect[one]['score']:.4f}")
    print(table(rows))


if __name__ == "__main__":
    main()
