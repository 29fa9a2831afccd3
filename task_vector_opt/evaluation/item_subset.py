"""Item subsets (--item_subset): after the first trials, score each later trial on a few anchor items and estimate
its full search score from them.

Anchor points, in the spirit of tinyBenchmarks and MERGE³: the first trials, scored on every search item, are the
training data. Each task's items are clustered on their vectors of values over those trials (Ward's hierarchical
clustering, scipy's); each cluster sends the item nearest its centre as its anchor, weighted by how many items it
stands for. A later trial's score of the task is the weighted mean of its anchors' values; the run's score is the
weighted mean over tasks, as for full scoring. An IRT fit (girth, py-irt) needs many more scored models than the
handful of trials the subset is fitted on, and binary responses, which the smooth objective is not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from task_vector_opt.evaluation.lm_eval_tasks.scoring import weighted_mean


@dataclass(frozen=True)
class ItemSubset:
    """Per task: the anchor documents and how many of the task's search documents each stands for."""

    anchors: dict[str, list[int]]  # task -> document ids
    weights: dict[str, list[float]]  # task -> per anchor, items it stands for (they sum to the task's items)
    fitted_on: list[int]  # the trials (numbers) whose full scores chose it

    @property
    def size(self) -> int:
        return sum(len(docs) for docs in self.anchors.values())

    def task_estimate(self, task: str, values: Mapping[int, float]) -> float:
        """The task's full score estimated from its anchors' values (document id -> value)."""
        weights = self.weights[task]
        return sum(w * float(values[doc]) for doc, w in zip(self.anchors[task], weights, strict=True)) / sum(weights)

    def estimate(self, values: Mapping[str, Mapping[int, float]], task_weights: Mapping[str, float]) -> float:
        """The full score: each task's estimate, weighed over tasks as the full score weighs their means."""
        tasks = list(self.anchors)
        return weighted_mean([self.task_estimate(t, values[t]) for t in tasks], [task_weights[t] for t in tasks])

    def to_json(self) -> dict[str, Any]:
        return {"anchors": self.anchors, "weights": self.weights, "fitted_on": self.fitted_on}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ItemSubset":
        return cls({t: [int(d) for d in docs] for t, docs in data["anchors"].items()},
                   {t: [float(w) for w in ws] for t, ws in data["weights"].items()},
                   [int(n) for n in data["fitted_on"]])


def anchor_points(values: np.ndarray, n: int) -> list[tuple[int, float]]:
    """``n`` anchors of the rows of ``values`` (items x trials): (row, items it stands for), weights summing to the
    number of rows.

    Ward's clustering into at most ``n`` clusters; each cluster's anchor is the member nearest its mean. Items the
    trials cannot tell apart (e.g. right in every trial) fall in one cluster, so there may be fewer clusters than
    ``n``: the remaining anchors go to the clusters with the most items per anchor, each of a cluster's anchors
    standing for an equal share of it.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    n_items = len(values)
    if n >= n_items:
        return [(i, 1.0) for i in range(n_items)]
    if n_items == 1 or n <= 1:
        labels = np.ones(n_items, dtype=int)
    else:
        labels = fcluster(linkage(values, method="ward"), t=n, criterion="maxclust")
    clusters = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    counts = [1] * len(clusters)
    for _ in range(max(n, 1) - len(clusters)):
        share = [len(c) / k if k < len(c) else 0.0 for c, k in zip(clusters, counts)]
        counts[int(np.argmax(share))] += 1
    anchors = []
    for members, k in zip(clusters, counts):
        distance = np.linalg.norm(values[members] - values[members].mean(axis=0), axis=1)
        nearest = members[np.argsort(distance, kind="stable")[:k]]
        anchors.extend((int(row), len(members) / k) for row in nearest)
    return sorted(anchors)


def choose_subset(values: Mapping[str, Sequence[Sequence[float]]], docs: Mapping[str, Sequence[int]], fraction: float,
                  fitted_on: Sequence[int]) -> ItemSubset:
    """The subset for ``fraction`` of each task's items, from ``values[task]`` (items x trials, in the order of
    ``docs[task]``, the task's search documents)."""
    anchors, weights = {}, {}
    for task, rows in values.items():
        matrix = np.asarray(rows, dtype=float).reshape(len(docs[task]), -1)
        n = max(1, round(fraction * len(matrix)))
        chosen = anchor_points(matrix, n)
        anchors[task] = [int(docs[task][row]) for row, _ in chosen]
        weights[task] = [weight for _, weight in chosen]
    return ItemSubset(anchors, weights, [int(n) for n in fitted_on])
