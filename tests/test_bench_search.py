"""benchmarks/bench_search.py runs its whole path (interference, runs with budgets, pruning, table) on tiny models."""
import json
import sys
from pathlib import Path


from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))




def test_the_benchmark_spends_each_budget_in_trial_equivalents_and_prints_one_row_per_run_and_budget(
        tmp_path, capsys, one_thread):
    import bench_search

    trio = make_trio(tmp_path / "trio", "llama", layers=4)
    out = tmp_path / "rows.jsonl"
    bench_search.main(["--strategies", "random/layer,TPE/profile2+median,CMA-ES/scale-profile2~choice_prob", "--seeds", "0", "--budgets", "1.5,3",
                       "--search_limit", "4", "--holdout_limit", "4", "--chunks", "2", "--batch_size", "8",
                       "--uniform_weights", "0,0.5,1",
                       "--out", str(out), "--target_model", str(trio["target"]), "--base_model", str(trio["base"]),
                       "--tuned_model", str(trio["tuned"])])
    printed = capsys.readouterr().out
    interference = json.loads(next(line for line in printed.splitlines() if line.startswith('{"interference"')))
    assert list(interference["interference"]) == ["w=0", "w=0.5", "w=1"]
    assert set(interference["interference"]["w=0.5"]) == {"score", "demo_target", "demo_skill"}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["selection"] for r in rows} == {"paired95", "paired80", "highest"}  # every rule, from the same runs
    assert all(r["strategy"].endswith("@" + r["selection"]) for r in rows if r["selection"] != "paired95")
    rows = [r for r in rows if r["selection"] == "paired95"]  # the engine's own rule: the plain strategy names
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("random/layer", 1.5), ("random/layer", 3), ("TPE/profile2+median", 1.5), ("TPE/profile2+median", 3),
        ("CMA-ES/scale-profile2~choice_prob", 1.5), ("CMA-ES/scale-profile2~choice_prob", 3)]
    for row in rows:
        assert row["testbed"] == "interference"  # the kind, so that rows of several kinds can share a file
        # stops at the first trial that reaches the budget: the trial before it had not
        assert row["budget"] <= row["trial_equivalents"] < row["budget"] + 1
        assert row["items_scored"] == round(row["trial_equivalents"] * 8)  # 4 search documents of each task
        assert row["vs_w1"]["n_items"] == 8  # paired over the 4 held-out documents of each task
    for small, large in (rows[0:2], rows[2:4], rows[4:6]):  # a smaller budget: the first trials of the same search
        assert small["trials"] < large["trials"] and small["items_scored"] < large["items_scored"]
        assert small["best_search"] <= large["best_search"]
    assert "random/layer" in printed.split("held-out (both skills")[1]
    # the scale-first strategy ran through the engine's own loop: its best trial has a scale and knot factors
    assert {"scale", "knot_0", "knot_1"} <= set(rows[5]["best_params"])


def test_a_budget_is_the_prefix_of_trials_up_to_the_first_that_reaches_it():
    from types import SimpleNamespace

    import bench_search

    trials = [SimpleNamespace(number=i, user_attrs={"items_scored": n}) for i, n in enumerate([8, 8, 2, 4, 8, 8])]
    assert [t.number for t in bench_search.budget_prefix(trials, 8, 2)] == [0, 1]
    assert [t.number for t in bench_search.budget_prefix(trials, 8, 2.5)] == [0, 1, 2, 3]  # 22 items >= 20
    assert [t.number for t in bench_search.budget_prefix(trials, 8, 10)] == [0, 1, 2, 3, 4, 5]  # never reached


def test_with_two_tuned_models_the_interference_is_every_combination_of_one_uniform_weight_per_vector(
        tmp_path, capsys, one_thread):
    import bench_search

    trio = make_trio(tmp_path / "trio", "llama", layers=2)
    second = make_trio(tmp_path / "second", "llama", layers=2)["tuned"]
    bench_search.main(["--testbed", "two_vectors", "--interference_only", "--uniform_weights", "0,1",
                       "--search_limit", "4", "--holdout_limit", "4", "--batch_size", "8",
                       "--target_model", str(trio["target"]), "--base_model", str(trio["base"]),
                       "--tuned_model", f"{trio['tuned']},{second}"])
    printed = capsys.readouterr().out
    interference = json.loads(next(line for line in printed.splitlines() if line.startswith('{"interference"')))
    assert list(interference["interference"]) == ["w=0,0", "w=0,1", "w=1,0", "w=1,1"]
    assert set(interference["interference"]["w=1,0"]) == {"score", "demo_target", "demo_skill"}


def test_the_steep_testbed_scores_the_targets_skill_and_the_conflicting_one(tmp_path):
    import bench_search

    args = bench_search.parse_args(["--testbed", "steep"])
    flags = bench_search.jglue_flags({"target": tmp_path / "t", "base": tmp_path / "b", "tuned": [tmp_path / "c"]},
                                     args, tmp_path)
    assert flags[flags.index("--jglue_tasks") + 1] == "demo_target:0.5,demo_skill_steep:0.5"
    assert flags[flags.index("--tuned_model") + 1] == str(tmp_path / "c")
