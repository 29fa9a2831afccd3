"""The docs' table of a search benchmark: one Markdown row per strategy and budget, from bench_search.py's JSON lines.

    .venv/bin/python benchmarks/search_table.py benchmarks/results/bench_search_steep_cpu_2026-12-06.jsonl

Columns: seeds, held-out mean +- sd of the best trial (both skills weighed together), each task's held-out score
(mean over seeds), how many runs beat w = 1 and w = 0 beyond the paired 95% interval, items scored, trials and
seconds spent scoring (mean over seeds). Rows of a strategy come in budget order.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()
                 if line.startswith("{") and '"strategy"' in line]
    return rows


def beats(rows: list[dict], key: str) -> str:
    """"3/5": runs whose best beat the reference beyond the paired 95% interval; "n/a" where rows lack it."""
    if not any(key in r for r in rows):
        return "n/a"
    return f"{sum(1 for r in rows if r.get(key) and r[key]['low'] > 0)}/{len(rows)}"


def markdown(rows: list[dict], reference: float | None = None) -> str:
    tasks = list(dict.fromkeys(task for r in rows for task in r["holdout_details"]))
    header = ["strategy", "budget", "seeds", "held-out mean ± sd", *tasks, "beats w=1", "beats w=0", "items",
              "trials", "seconds"]
    if reference is not None:
        header.insert(4, "÷ best uniform")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = list(dict.fromkeys(r["strategy"] for r in rows))
    for strategy in order:
        for budget in sorted({r["budget"] for r in rows if r["strategy"] == strategy}):
            group = [r for r in rows if r["strategy"] == strategy and r["budget"] == budget]
            values = [r["holdout_best"] for r in group]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells = [f"`{strategy}`", f"{budget:g}", str(len(group)), f"{statistics.fmean(values):.4f} ± {sd:.4f}"]
            if reference is not None:
                cells.append(f"{statistics.fmean(values) / reference:.3f} (min {min(values) / reference:.3f})")
            cells += [f"{statistics.fmean(r['holdout_details'].get(t, float('nan')) for r in group):.3f}"
                      for t in tasks]
            cells += [beats(group, "vs_w1"), beats(group, "vs_w0"),
                      f"{statistics.fmean(r['items_scored'] for r in group):.0f}",
                      f"{statistics.fmean(r['trials'] for r in group):.1f}",
                      f"{statistics.fmean(r['wall_s'] for r in group):.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="JSON-lines files written by bench_search.py --out")
    parser.add_argument("--reference", type=float, help="the best uniform-sweep held-out score: adds the ratio column")
    args = parser.parse_args(argv)
    print(markdown(load(args.files), args.reference))


if __name__ == "__main__":
    main()
