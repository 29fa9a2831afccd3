"""report.html renders offline (checked in headless Chromium), the `report` command, the model card's metadata,
and the per-trial details optuna-dashboard shows."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from finished_study import make_finished_study
from task_vector_opt.outputs.model_card import metadata, render_model_card
from task_vector_opt.files import write_side_files
from task_vector_opt.outputs.report import report_files, study_view

ROOT = Path(__file__).resolve().parent.parent
PLOT_TITLES = ("Optimization history", "Best weights by layer / parameter", "Parameter importances",
               "Parallel coordinates")


@pytest.fixture(scope="module")
def storage_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('study') / 'study.db'}"


@pytest.fixture(scope="module")
def study(storage_url):
    return make_finished_study(storage_url)


@pytest.fixture(scope="module")
def report_dir(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_side_files(out, report_files(study))
    return out


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: scripts/test.sh installs it (scripts/system_packages.sh)"
    return found


def headless(*args: str) -> subprocess.CompletedProcess:
    # --proxy-server to a closed port: any network request the page tried would fail, so what renders is offline
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                           "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=120)


def test_report_renders_offline_in_headless_chromium_with_every_plot(report_dir, tmp_path):
    page = report_dir / "report.html"
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"http", page.read_text(encoding="utf-8"))
    dom = headless("--dump-dom", page.as_uri()).stdout
    # plotly.js ran (from the inline copy): each of the four plot divs holds a rendered plot with its SVG layers
    divs = re.findall(r'<div id="[^"]+" class="plotly-graph-div[^"]*js-plotly-plot', dom)
    assert len(divs) == 4, dom[:2000]
    assert dom.count('class="plot-container plotly"') == 4 and dom.count('class="main-svg"') >= 8
    for title in PLOT_TITLES:
        assert f"<h2>{title}</h2>" in dom
    assert 'class="missing"' not in dom
    assert "w=1 (plain task vector)" in dom and "w=0 (target unchanged)" in dom  # baseline lines are drawn
    shot = tmp_path / "report.png"
    done = headless(f"--screenshot={shot}", "--window-size=1280,3000", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000, done.stderr[-2000:]


def test_report_shows_scores_baselines_and_best_weights(study, report_dir):
    view = study_view(study)
    assert view.best_number >= 2  # the search beat both baselines on this study
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert f"best (trial {view.best_number})" in page and "0.8100" in page  # holdout of the best
    for group, weight in view.best_weights.items():
        assert f"<td>{group}</td><td>{weight:.4f}</td>" in page
    assert view.best_so_far == sorted(view.best_so_far) and view.best_so_far[-1] == view.best_value


def test_report_command_writes_the_report_of_a_finished_study(study, storage_url, tmp_path):
    storage = storage_url
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "task_vector_opt.outputs.report", "--storage", storage, "--output_dir",
                           str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"report.html", "optimization_history.png", "best_weights.png"}
    assert str(out / "report.html") in done.stdout


@pytest.mark.parametrize("extra, expected", [
    (["--study_name", "nope"], "no study 'nope'"),
    (["--bogus"], "unrecognized arguments"),
])
def test_report_command_errors_are_one_line_with_exit_code_2(study, storage_url, tmp_path, extra, expected):
    storage = storage_url
    done = subprocess.run([sys.executable, "-m", "task_vector_opt.outputs.report", "--storage", storage, "--output_dir",
                           str(tmp_path / "o"), *extra], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr
    assert "report-test" in done.stderr or "--help" in done.stderr


def test_report_command_on_a_missing_database_creates_nothing(tmp_path):
    missing = tmp_path / "runs" / "typo" / "study.db"
    done = subprocess.run([sys.executable, "-m", "task_vector_opt.outputs.report", "--storage", f"sqlite:///{missing}",
                           "--output_dir", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "--storage" in done.stderr and "no such SQLite file" in done.stderr
    assert not missing.exists() and not (tmp_path / "o").exists()


def test_model_card_metadata_names_hub_sources_as_a_merge():
    from huggingface_hub.utils import validate_repo_id

    meta = metadata({"targets": ["org/target-7b"], "base_model": "org/base-7b", "tuned_model": "org/tuned-7b",
                     "optimize_mode": "layer"})
    assert meta["base_model"] == ["org/target-7b", "org/tuned-7b", "org/base-7b"]
    assert meta["base_model_relation"] == "merge" and {"merge", "task-vector"} <= set(meta["tags"])
    for repo in meta["base_model"]:
        validate_repo_id(repo)
    assert "base_model" not in metadata({"targets": ["./local/dir"], "base_model": "/abs/base",
                                         "tuned_model": "~/tuned"})


def test_model_card_of_a_finished_study_loads_with_huggingface_hub(study, tmp_path):
    from huggingface_hub import ModelCard

    view = study_view(study)
    recipe = {"inputs": study.user_attrs["inputs"], "weights": view.best_weights, "tool": "task_vector_opt test",
              "study": {"name": view.name, "storage": "sqlite:///runs/x/study.db"}, "tensors": 30}
    (tmp_path / "README.md").write_text(render_model_card(view, recipe, mergekit_ok=True), encoding="utf-8")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == ["org/target-7b", "org/tuned-7b-chat", "org/base-7b"]
    assert card.data.tags[:2] == ["merge", "task-vector"] and card.data.pipeline_tag == "text-generation"
    assert "mergekit-yaml mergekit_config.yml" in card.text and "--study_name report-test" in card.text
    assert "| w=1 (plain task vector) |" in card.text


def test_optuna_dashboard_shows_per_task_scores_judge_cost_and_elapsed_time(study):
    from optuna_dashboard import wsgi

    app = wsgi(study._storage)
    status: list[str] = []

    def get(path: str):
        from wsgiref.util import setup_testing_defaults

        environ = {"PATH_INFO": path}
        setup_testing_defaults(environ)
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status[-1].startswith("200"), body[:2000]
        return json.loads(body)

    study_id = next(s["study_id"] for s in get("/api/studies")["study_summaries"] if s["study_name"] == study.study_name)
    trials = get(f"/api/studies/{study_id}")["trials"]
    assert len(trials) == 16
    attrs = {a["key"]: a["value"] for a in trials[-1]["user_attrs"]}
    assert {"demo_skill", "target_task", "judge/cost_usd", "elapsed_s"} <= set(attrs)
    assert {a["key"] for a in trials[0]["user_attrs"]} >= {"baseline", "elapsed_s"}


@pytest.mark.parametrize("pipeline_name, targets", [("jglue", ["org/t"]), ("mt_bench", ["org/t"]),
                                               ("mt_bench_moe_2", ["org/a", "org/b"])])
def test_the_model_cards_reproduce_command_parses_with_the_real_script(pipeline_name, targets):
    import shlex

    from task_vector_opt.cli.flags import parse_namespace
    from task_vector_opt.outputs.model_card import reproduce_command
    from task_vector_opt.cli.pipelines import JGLUE, MT_BENCH, MT_BENCH_MOE_2

    inputs = {"pipeline": pipeline_name, "targets": targets, "base_model": "org/base", "tuned_model": "org/tuned",
              "optimize_mode": "layer", "optuna_sampler": "TPE", "optuna_seed": 3, "weight_min": 0.0,
              "weight_max": 2.0, "dtype": "bfloat16"}
    words = shlex.split(reproduce_command(inputs, "study-x", "sqlite:///runs/x/study.db").replace("\\\n", " "))
    pipeline = {"jglue": JGLUE, "mt_bench": MT_BENCH, "mt_bench_moe_2": MT_BENCH_MOE_2}[pipeline_name]
    assert words[:2] == ["python", pipeline.command_line.prog] and (ROOT / pipeline.command_line.prog).is_file()
    args = parse_namespace(pipeline.command_line, words[2:])
    assert args.finalize and args.study_name == "study-x" and args.optuna_seed == 3


def test_the_html_and_png_plots_are_drawn_from_one_plot_description(study):
    from task_vector_opt.outputs.report import history_figure, history_plot, weights_figure, weights_plot

    view = study_view(study)
    history = history_plot(view)
    assert history.trials == [n for n, _ in view.values] and history.best_so_far == view.best_so_far
    assert sorted(line.label.split(":")[0] for line in history.baselines) == sorted(view.baselines)
    figure = history_figure(history)  # the HTML's plot shows exactly the described points and lines
    assert list(figure.data[0].y) == history.scores and list(figure.data[1].y) == history.best_so_far
    assert [shape.y0 for shape in figure.layout.shapes] == [line.value for line in history.baselines]
    weights = weights_plot(view)
    bars = weights_figure(weights).data[0]
    assert list(bars.x) == list(view.best_weights) and list(bars.y) == list(view.best_weights.values())
