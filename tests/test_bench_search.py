"""benchmarks/bench_search.py runs its whole path (interference, runs with budgets, pruning, table) on tiny models."""
import json
import sys
from pathlib import Path

import pytest
import torch

from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_benchmark_spends_each_budget_in_trial_equivalents_and_prints_one_row_per_run(tmp_path, capsys,
                                                                                        one_thread):
    import bench_search

    trio = make_trio(tmp_path / "trio", "llama", layers=4)
    out = tmp_path / "rows.jsonl"
    bench_search.main(["--strategies", "random/layer,TPE/profile2+median", "--seeds", "0", "--budgets", "3",
                       "--search_limit", "4", "--holdout_limit", "4", "--chunks", "2", "--batch_size", "8",
                       "--out", str(out), "--target_model", str(trio["target"]), "--base_model", str(trio["base"]),
                       "--tuned_model", str(trio["tuned"])])
    printed = capsys.readouterr().out
    interference = json.loads(next(line for line in printed.splitlines() if line.startswith('{"interference"')))
    assert set(interference["interference"]["w=0"]) == {"score", "demo_target", "demo_skill"}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["strategy"] for r in rows] == ["random/layer", "TPE/profile2+median"]
    for row in rows:
        assert 3 <= row["trial_equivalents"] < 4  # stops at the first trial that reaches the budget
        assert row["items_scored"] == round(row["trial_equivalents"] * 8)  # 4 search documents of each task
        assert row["vs_w1"]["n_items"] == 8  # paired over the 4 held-out documents of each task
    assert "random/layer" in printed.split("held-out (both skills")[1]
