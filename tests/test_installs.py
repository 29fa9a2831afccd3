"""Installs that work: every extra resolves, the declared floors have what the code calls, and a plain
(non-editable) install runs as ``task-vector-opt <script>`` from any directory with its default bench data."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from cli_checks import expect_usage_error
from task_vector_opt.cli import main as console
from task_vector_opt.evaluation.bench import settings as bench_settings
from task_vector_opt.evaluation.bench.files import DEFAULT_BENCH_DIR, DEFAULT_JUDGE_FILE, PACKAGED_BENCH_DIR

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared(name: str) -> Requirement:
    """The requirement on ``name`` among the dependencies and extras of pyproject.toml."""
    project = PYPROJECT["project"]
    every = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    found = [Requirement(r) for r in every if Requirement(r).name.lower().replace("_", "-") == name]
    assert len(found) == 1, (name, found)
    return found[0]


def floor(requirement: Requirement) -> Version:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    assert floors, f"{requirement} has no floor"
    return max(floors)


# ----------------------------------------------------------------------------------- floors and bounds

# The first release with what the code calls, each read in that release's wheel and the one before it.
FIRST_WITH_WHAT_THE_CODE_CALLS = {
    # TaskManager.load (evaluation/jglue.py) and lm_eval.tasks._yaml_loader (lm_eval_tasks/resolution.py): both
    # first in 0.4.12 (its new lm_eval/tasks/manager.py); 0.4.11's TaskManager has no load
    "lm-eval": "0.4.12",
    # merging/models.py imports httpx2, the hub's HTTP client from 2.0 on (1.x is on httpx), and reads
    # errors.IncompleteSnapshotError and constants.is_offline_mode, both absent from 1.0
    "huggingface-hub": "2.0",
    # the first 5.x that admits huggingface_hub 2.x: 5.0-5.17 require huggingface-hub<2.0
    "transformers": "5.18",
}


@pytest.mark.parametrize("name", sorted(FIRST_WITH_WHAT_THE_CODE_CALLS))
def test_each_declared_floor_has_what_the_code_calls(name):
    assert floor(declared(name)) >= Version(FIRST_WITH_WHAT_THE_CODE_CALLS[name]), declared(name)


def test_the_installed_versions_have_those_apis():
    import huggingface_hub.constants
    import huggingface_hub.errors
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml  # noqa: F401

    assert callable(TaskManager.load)
    assert hasattr(huggingface_hub.errors, "IncompleteSnapshotError")
    assert callable(huggingface_hub.constants.is_offline_mode)
    import httpx2  # noqa: F401  (merging/models.py reads its TimeoutException and NetworkError)


# Libraries whose internals the code subclasses or patches: each capped below its next minor release.
CAPPED = ("lm-eval", "optuna", "vllm")


@pytest.mark.parametrize("name", CAPPED)
def test_libraries_whose_internals_the_code_uses_are_capped_below_their_next_minor(name):
    from importlib.metadata import PackageNotFoundError, version

    from task_vector_opt.evaluation.vllm_backend import MIN_VLLM

    requirement = declared(name)
    caps = [Version(s.version) for s in requirement.specifier if s.operator == "<"]
    assert caps, f"{requirement} has no upper bound"
    try:
        tested = Version(version(name))  # what this environment runs the tests with
    except PackageNotFoundError:  # vllm: GPU machines only; its names are tested against MIN_VLLM's source
        tested = Version(MIN_VLLM)
    assert requirement.specifier.contains(tested, prereleases=True), f"{requirement} refuses {tested}"
    assert min(caps) <= Version(f"{tested.major}.{tested.minor + 1}"), f"{requirement} admits {tested}'s next minor"


def test_the_vllm_version_the_name_tests_read_is_the_one_the_extra_installs():
    from task_vector_opt.evaluation.vllm_backend import MIN_VLLM

    assert declared("vllm").specifier.contains(MIN_VLLM)
    assert f'"vllm=={MIN_VLLM}"' in (ROOT / "benchmarks" / "gpu_check.sh").read_text()


# ------------------------------------------------------------------------------- extras resolving

def test_the_extras_check_fails_on_an_extra_the_registry_cannot_satisfy(tmp_path):
    # vllm 0.34.0 pins flashinfer-python==0.7.3, a release the registry does not have (it has 0.7.2.post1, 0.7.4)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "extras-probe"\nversion = "0.0.1"\ndependencies = []\n'
        '[project.optional-dependencies]\nfine = ["packaging>=20"]\nvllm = ["vllm==0.34.0"]\n', encoding="utf-8")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_extras.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "resolves: extra 'fine'" in done.stdout
    assert "DOES NOT RESOLVE: extra 'vllm'" in done.stdout and "flashinfer-python" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: not resolvable against the package registry: vllm")


def test_scripts_test_sh_checks_the_extras_before_the_whole_suite():
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert script.index("scripts/check_extras.py") < script.index("-m pytest")


# ------------------------------------------------------------------------- the default bench data

def test_the_repos_fastchat_path_is_the_packaged_bench_data():
    assert (ROOT / DEFAULT_BENCH_DIR).resolve() == PACKAGED_BENCH_DIR
    assert (PACKAGED_BENCH_DIR / "example" / "question.jsonl").is_file()


def test_the_default_paths_resolve_to_the_package_when_absent_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bench_settings._resolve_existing(DEFAULT_BENCH_DIR, DEFAULT_BENCH_DIR) == PACKAGED_BENCH_DIR
    assert bench_settings._resolve_existing(DEFAULT_JUDGE_FILE, DEFAULT_JUDGE_FILE) == \
        PACKAGED_BENCH_DIR / "judge_prompts.jsonl"
    own = tmp_path / DEFAULT_BENCH_DIR
    own.mkdir(parents=True)  # a FastChat folder of the user's own, here, is used as given
    assert bench_settings._resolve_existing(DEFAULT_BENCH_DIR, DEFAULT_BENCH_DIR) == own


# ------------------------------------------------------------------------------- the console command

def test_the_console_command_is_declared_and_names_each_root_script():
    assert PYPROJECT["project"]["scripts"]["task-vector-opt"] == "task_vector_opt.cli.main:main"
    assert sorted(f"merge_task_vector_{name}.py" for name in console.SCRIPTS) == \
        sorted(p.name for p in ROOT.glob("merge_task_vector_*.py"))


def test_an_unknown_script_is_one_line_with_a_close_match(capsys):
    expect_usage_error(console.run, ["mt_bench_moe_3_experts"], capsys, "task-vector-opt", "did you mean")
    expect_usage_error(console.run, [], capsys, "name a script")


def test_help_names_the_command_as_typed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        console.main(["merge_task_vector_jglue.py", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: task-vector-opt jglue ")


def _fresh_venv_over_this_one(where: Path) -> Path:
    """A new venv whose own site-packages comes first and which sees this environment's packages (torch, ...)
    after it, through a .pth line: nothing is downloaded, and this checkout's editable install stays out of it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return python


@pytest.mark.e2e
def test_a_plain_pip_install_runs_from_another_directory_with_its_default_bench_and_judge_prompts(tmp_path):
    from tiny_models import make_trio

    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".cache", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache", "models",
        "demo_output", "model-chatvector*"))
    python = _fresh_venv_over_this_one(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", str(source)], check=True, capture_output=True, text=True)
    shutil.rmtree(source)  # the installed package must not need its source tree

    elsewhere = tmp_path / "elsewhere"
    trio = make_trio(elsewhere / "models")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    where = subprocess.run([str(python), "-c", "import json, task_vector_opt.evaluation.bench.files as f; "
                            "print(json.dumps([f.__file__, str(f.PACKAGED_BENCH_DIR)]))"],
                           capture_output=True, text=True, check=True, cwd=elsewhere, env=environment)
    module_file, packaged = json.loads(where.stdout)
    assert Path(module_file).is_relative_to(tmp_path / "venv"), module_file  # the installed copy, not the checkout
    assert sorted(p.relative_to(packaged).as_posix() for p in Path(packaged).rglob("*.jsonl")) == \
        ["example/question.jsonl", "example/reference_answer/gpt-4.jsonl", "judge_prompts.jsonl"]

    done = subprocess.run([str(tmp_path / "venv" / "bin" / "task-vector-opt"), "mt_bench",
                           "--target_model", str(trio["target"]), "--base_model", str(trio["base"]),
                           "--tuned_model", str(trio["tuned"]), "--judge_model_name", f"hf:{trio['base']}",
                           "--output_dir", "out", "--run_dir", "run", "--dry_run"],
                          capture_output=True, text=True, cwd=elsewhere, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])
    assert plan["evaluator"].startswith("MT-Bench 'example' judged by hf:"), plan  # the default bench, found
