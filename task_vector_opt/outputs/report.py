"""The run report: one self-contained report.html (plotly.js embedded once, opens offline) and two PNGs
(matplotlib) drawn from the same plot data as the HTML's history and weights plots.

Written at the end of every run into --output_dir, and on demand for a finished study:

    python -m task_vector_opt.outputs.report --storage sqlite:///runs/<study>/study.db --output_dir DIR
"""
from __future__ import annotations

import argparse
import html
import io
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from task_vector_opt.outputs.search_text import search_sentence
from task_vector_opt.search.selection import chosen_trial
from task_vector_opt.errors import UsageError, parse_one_line, run_cli
from task_vector_opt.files import write_side_files

log = logging.getLogger(__name__)

HISTORY_PNG = "optimization_history.png"
WEIGHTS_PNG = "best_weights.png"
REPORT_HTML = "report.html"
MAX_PARALLEL_PARAMS = 12  # parallel coordinates stay readable with the most important dozen weights
BASELINE_COLORS = {"w=0": "#7f7f7f", "w=1": "#d62728"}


@dataclass
class StudyView:
    """What the report shows, read once from a study (plain data, so plots and the model card share it)."""

    name: str
    values: list[tuple[int, float]]  # (trial number, score) of completed trials, in order
    best_number: int
    best_value: float
    best_weights: dict[str, float]  # per merge group; profile mode: the layer weights interpolated from the knots
    baselines: dict[str, float]  # "w=1 (plain task vector)" -> search score
    holdout: dict[str, float] = field(default_factory=dict)
    holdout_parts: dict[str, dict[str, float]] = field(default_factory=dict)  # "w=0"/"w=1"/"best" -> task -> score
    inputs: dict[str, Any] = field(default_factory=dict)
    n_pruned: int = 0
    n_failed: int = 0
    best_params: dict[str, float] = field(default_factory=dict)  # what the sampler proposed (profile: knots)
    verdict: dict[str, Any] = field(default_factory=dict)  # paired held-out differences (search.verdict)
    items_scored: list[tuple[int, str, int]] = field(default_factory=list)  # (trial, state, items) when counted

    @property
    def items_total(self) -> int:
        return sum(items for _, _, items in self.items_scored)

    @property
    def best_so_far(self) -> list[float]:
        running, out = -math.inf, []
        for _, value in self.values:
            running = max(running, value)
            out.append(running)
        return out


def study_view(study: optuna.Study) -> StudyView:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        raise ValueError(f"study {study.study_name!r} has no completed trial")
    best = chosen_trial(complete)  # the declared best (search.selection), as the run saved it
    order = _weight_order(complete)
    # profile mode keeps the merger's weights on each trial (user attr "weights"); other modes: the params
    weights = best.user_attrs.get("weights") or {name: best.params[name] for name in order if name in best.params}
    return StudyView(
        name=study.study_name,
        values=[(t.number, float(t.value)) for t in complete],
        best_number=best.number,
        best_value=float(best.value),
        best_weights={name: float(w) for name, w in weights.items()},
        best_params={name: float(best.params[name]) for name in order if name in best.params},
        verdict=dict(study.user_attrs.get("verdict") or {}),
        items_scored=[(t.number, t.state.name.lower(), int(t.user_attrs["items_scored"])) for t in trials
                      if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "items_scored" in t.user_attrs],
        baselines={t.user_attrs["baseline"]: float(t.value) for t in complete if "baseline" in t.user_attrs},
        holdout={k: float(v) for k, v in (study.user_attrs.get("holdout") or {}).items() if v is not None},
        holdout_parts={k: {n: float(x) for n, x in v.items()}
                       for k, v in (study.user_attrs.get("holdout_parts") or {}).items()},
        inputs=dict(study.user_attrs.get("inputs") or {}),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
    )


def _weight_order(trials: Sequence[FrozenTrial]) -> list[str]:
    """The order the sampler proposed the weights in (model order), taken from the first trial's distributions."""
    return list(dict.fromkeys(name for t in trials for name in t.distributions))


def baseline_short(label: str) -> str:
    return label.split(" ", 1)[0]  # "w=1 (plain task vector)" -> "w=1"


# ------------------------------------------------------------------------------------------------ plot data
# The two plots that exist both in report.html (plotly) and as PNGs (matplotlib) are drawn from one description,
# so the interactive and the static picture always show the same points, lines and titles. (plotly alone could
# write the PNGs only through kaleido, which drives a Chrome install of its own.)

@dataclass
class Line:
    """A horizontal reference line: a baseline's score, or w = 1."""

    value: float
    label: str
    color: str


@dataclass
class HistoryPlot:
    trials: list[int]
    scores: list[float]
    best_so_far: list[float]
    baselines: list[Line]
    title: str


@dataclass
class WeightsPlot:
    groups: list[str]
    weights: list[float]
    reference: Line
    title: str
    x_title: str


def history_plot(view: StudyView) -> HistoryPlot:
    return HistoryPlot(
        trials=[n for n, _ in view.values], scores=[v for _, v in view.values], best_so_far=view.best_so_far,
        baselines=[Line(value, f"{label}: {value:.4g}", BASELINE_COLORS.get(baseline_short(label), "#555"))
                   for label, value in sorted(view.baselines.items())],
        title=f"Score per trial, best so far, and the baselines ({len(view.values)} trials, best "
              f"{view.best_value:.4g} at trial {view.best_number})")


def weights_plot(view: StudyView) -> WeightsPlot:
    return WeightsPlot(
        groups=list(view.best_weights), weights=list(view.best_weights.values()),
        reference=Line(1.0, "w=1 (plain addition)", BASELINE_COLORS["w=1"]),
        title=f"Best trial ({view.best_number}): weight of the task vector per "
              f"{view.inputs.get('optimize_mode', 'group')} group",
        x_title="weight group (layer / parameter)")


# ------------------------------------------------------------------------------------------------ plotly figures

def history_figure(plot: HistoryPlot):
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=plot.trials, y=plot.scores, mode="markers", name="trial score",
                                marker_color="#1f77b4"),
                     go.Scatter(x=plot.trials, y=plot.best_so_far, mode="lines", line_shape="hv", name="best so far",
                                line_color="#ff7f0e")])
    for line in plot.baselines:
        fig.add_hline(y=line.value, line_dash="dash", line_color=line.color, annotation_text=line.label,
                      annotation_position="top left")
    fig.update_layout(title=plot.title, xaxis_title="trial", yaxis_title="search score")
    return fig


def weights_figure(plot: WeightsPlot):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=plot.groups, y=plot.weights, name="w", marker_color="#1f77b4"))
    fig.add_hline(y=plot.reference.value, line_dash="dash", line_color=plot.reference.color,
                  annotation_text=plot.reference.label)
    fig.update_layout(title=plot.title, xaxis_title=plot.x_title, yaxis_title="w", xaxis_tickangle=-60)
    return fig


def importance(study: optuna.Study) -> dict[str, float]:
    """Parameter importances (Optuna's default evaluator); empty when the study is too small to tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        log.info("parameter importances not available: %s", exc)
        return {}


def importance_figure(study: optuna.Study, importances: dict[str, float]):
    from optuna.visualization import plot_param_importances

    if not importances:
        raise ValueError("needs at least two completed trials with different weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = plot_param_importances(study, params=list(importances)[:40], target_name="score")
    fig.update_layout(title="Which weights mattered (parameter importances, top 40)")
    return fig


def parallel_figure(study: optuna.Study, importances: dict[str, float], view: StudyView):
    from optuna.visualization import plot_parallel_coordinate

    params = list(importances)[:MAX_PARALLEL_PARAMS] if importances else list(view.best_weights)[
        :MAX_PARALLEL_PARAMS]
    fig = plot_parallel_coordinate(study, params=params, target_name="score")
    fig.update_layout(title=f"Parallel coordinates ({len(params)} most important weights)")
    return fig


def figures(study: optuna.Study, view: StudyView) -> list[tuple[str, Any]]:
    """(title, figure or the reason it is missing) for each section of the report."""
    importances = importance(study)
    builders = [
        ("Optimization history", lambda: history_figure(history_plot(view))),
        ("Best weights by layer / parameter", lambda: weights_figure(weights_plot(view))),
        ("Parameter importances", lambda: importance_figure(study, importances)),
        ("Parallel coordinates", lambda: parallel_figure(study, importances, view)),
    ]
    out: list[tuple[str, Any]] = []
    for title, build in builders:
        try:
            out.append((title, build()))
        except Exception as exc:  # one plot that cannot be drawn must not cost the run its other outputs
            log.warning("report: %s not drawn (%s: %s)", title, type(exc).__name__, exc)
            out.append((title, f"not available: {exc}"))
    return out


# ------------------------------------------------------------------------------------------------ HTML

def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)


def part_names(view: StudyView) -> list[str]:
    """The tasks a held-out score weighs together (JGLUE with several tasks), in order; empty otherwise."""
    return list(dict.fromkeys(name for parts in view.holdout_parts.values() for name in parts))


def score_rows(view: StudyView) -> list[tuple[Any, ...]]:
    """(merge, search score, held-out score, then each task's held-out score) for w=0, w=1 and the best trial."""
    parts = part_names(view)
    rows = []
    for label in sorted(view.baselines, key=baseline_short):
        short = baseline_short(label)
        rows.append((label, view.baselines[label], view.holdout.get(short),
                     *(view.holdout_parts.get(short, {}).get(name) for name in parts)))
    rows.append((f"best (trial {view.best_number})", view.best_value, view.holdout.get("best"),
                 *(view.holdout_parts.get("best", {}).get(name) for name in parts)))
    return rows


def verdict_rows(view: StudyView) -> list[tuple[str, float, float, float, int]]:
    """(reference, best - reference, interval low, high, items) for each paired held-out comparison."""
    rows = []
    for reference in ("w=1", "w=0"):
        comparison = view.verdict.get(f"vs {reference}")
        if comparison:
            rows.append((reference, comparison["difference"], comparison["low"], comparison["high"],
                         comparison["n_items"]))
    return rows


def verdict_html(view: StudyView) -> str:
    if not view.verdict:
        return ""
    sentences = "".join(f"<li>{html.escape(s)}</li>" for s in view.verdict.get("sentences", []))
    table = _table(("best vs", "held-out difference", "95% low", "95% high", "items"), verdict_rows(view))
    return f"<h2>Verdict (paired over held-out items, bootstrap)</h2><ul>{sentences}</ul>{table}"


def items_html(view: StudyView) -> str:
    if not view.items_scored:
        return ""
    pruned = sum(1 for _, state, _ in view.items_scored if state == "pruned")
    rows = [(number, state, items) for number, state, items in view.items_scored]
    return (f"<h2>Evaluation cost</h2><p>{view.items_total} search items scored in {len(rows)} trials "
            f"({pruned} pruned, each counted for the items it scored).</p>"
            f'<div class="weights">{_table(("trial", "state", "items scored"), rows)}</div>')


def knots_html(view: StudyView) -> str:
    knots = [(name, value) for name, value in view.best_params.items() if name.startswith("knot_")]
    if not knots:
        return ""
    return (f"<p>Profile knots (the layer weights below are interpolated from them along depth):</p>"
            f"{_table(('knot', 'w'), knots)}")


def render_html(study: optuna.Study, view: StudyView | None = None) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    view = view or study_view(study)
    inputs = view.inputs
    sources = [(role, inputs.get(key)) for role, key in (("target", "targets"), ("base", "base_model"),
                                                         ("tuned", "tuned_model")) if inputs.get(key) is not None]
    sources = [(role, ", ".join(v) if isinstance(v, list) else v) for role, v in sources]
    sections = []
    for title, fig in figures(study, view):
        if isinstance(fig, str):
            body = f'<p class="missing">{html.escape(fig)}</p>'
        else:
            body = pio.to_html(fig, include_plotlyjs=False, full_html=False, default_height="520px",
                               config={"displaylogo": False, "responsive": True})
        sections.append(f'<section class="plot"><h2>{html.escape(title)}</h2>{body}</section>')
    setup = ", ".join(f"{k}={inputs[k]}" for k in ("pipeline", "optimize_mode", "optuna_sampler", "optuna_seed",
                                                    "weight_min", "weight_max", "dtype") if k in inputs)
    if inputs.get("merge"):  # several vectors or TIES / DARE: the method and its density range
        setup += ", " + ", ".join(f"{k}={v}" for k, v in inputs["merge"].items())
    if (how := search_sentence(inputs)):
        setup += "; " + how
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Task vector merge report: {html.escape(view.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #f3f3f3; }}
.missing {{ color: #a00; }}
.weights {{ max-height: 320px; overflow-y: auto; display: inline-block; }}
</style>
<script>{get_plotlyjs()}</script>
</head><body>
<h1>Task vector merge: {html.escape(view.name)}</h1>
<p>merged = target + w &times; (tuned &minus; base); {html.escape(setup)}.
{len(view.values)} completed trials, {view.n_pruned} pruned, {view.n_failed} failed.</p>
<h2>Sources</h2>{_table(("role", "model"), sources)}
<h2>Scores</h2>{_table(("merge", "search score", "held-out score", *(f"held-out {name}" for name in part_names(view))),
                       score_rows(view))}
{verdict_html(view)}
{items_html(view)}
{''.join(sections)}
<h2>Best weights (trial {view.best_number})</h2>
{knots_html(view)}<div class="weights">{_table(("group", "w"), list(view.best_weights.items()))}</div>
</body></html>
"""


# ------------------------------------------------------------------------------------------------ PNG (matplotlib)

def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def history_png(plot: HistoryPlot) -> bytes:
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    try:
        ax.scatter(plot.trials, plot.scores, s=22, color="#1f77b4", label="trial score", zorder=3)
        ax.step(plot.trials, plot.best_so_far, where="post", color="#ff7f0e", label="best so far")
        for line in plot.baselines:
            ax.axhline(line.value, ls="--", lw=1.2, color=line.color, label=line.label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers are whole
        ax.set_xlabel("trial")
        ax.set_ylabel("search score")
        ax.set_title(plot.title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        return _png(fig)
    finally:
        plt.close(fig)


def weights_png(plot: WeightsPlot) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, 0.28 * len(plot.groups) + 2)), 4.2))
    try:
        ax.bar(range(len(plot.groups)), plot.weights, color="#1f77b4")
        ax.axhline(plot.reference.value, ls="--", lw=1.2, color=plot.reference.color, label=plot.reference.label)
        ax.set_xticks(range(len(plot.groups)), plot.groups, rotation=70, ha="right", fontsize=7)
        ax.set_xlabel(plot.x_title)
        ax.set_ylabel("w")
        ax.set_title(plot.title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        return _png(fig)
    finally:
        plt.close(fig)


def report_files(study: optuna.Study) -> dict[str, str | bytes]:
    """{file name: content} of the report: report.html and the two PNGs."""
    view = study_view(study)
    return {REPORT_HTML: render_html(study, view), HISTORY_PNG: history_png(history_plot(view)),
            WEIGHTS_PNG: weights_png(weights_plot(view))}


# ------------------------------------------------------------------------------------------------ command

def load_finished_study(storage_url: str, study_name: str | None) -> optuna.Study:
    from task_vector_opt.search.study import open_storage, redact

    if storage_url.startswith("sqlite:///") and not Path(storage_url.removeprefix("sqlite:///")).is_file():
        raise UsageError("--storage", f"{storage_url!r}: no such SQLite file; give the study.db of a run "
                                      "(runs/<study_name>/study.db)")  # opening it would create an empty one
    storage = open_storage(storage_url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name is None:
        if len(names) != 1:
            raise UsageError("--study_name", f"{redact(storage_url)} holds {len(names)} studies "
                                             f"({', '.join(names) or 'none'}); name one")
        study_name = names[0]
    elif study_name not in names:
        raise UsageError("--study_name", f"no study {study_name!r} in {redact(storage_url)}; it holds: "
                                         f"{', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UsageError("--study_name", f"study {study_name!r} has no completed trial yet; run the search first")
    return study


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m task_vector_opt.outputs.report",
                                description="Write report.html and the PNG plots for a finished study.")
    p.add_argument("--storage", required=True, help="Optuna storage URL of the study (e.g. "
                                                    "sqlite:///runs/<study>/study.db, or a journal .log file).")
    p.add_argument("--study_name", help="Study to report on (default: the only study in --storage).")
    p.add_argument("--output_dir", required=True, help="Directory the report files are written into (created "
                                                       "if missing; existing report files are replaced).")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    from task_vector_opt.files import check_writable_dir

    args = parse_one_line(parser(), argv)

    check_writable_dir("--output_dir", args.output_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_finished_study(args.storage, args.study_name)
    out = Path(args.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    write_side_files(out, report_files(study))
    print(f"report written to {out / REPORT_HTML} (plots: {HISTORY_PNG}, {WEIGHTS_PNG})")


if __name__ == "__main__":
    run_cli(main)
