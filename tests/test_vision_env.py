"""The tests marked vision (Qwen2-VL's processor needs torchvision) run in their own environment, .venv-vision:
scripts/test.sh, as CI calls it, makes it and runs them there, and where torchvision is missing they fail, never
skip."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_the_whole_suite_runs_the_vision_tests_in_vision_env_and_the_others_in_venv():
    script = code_lines(ROOT / "scripts" / "test.sh")
    whole = script[script.index(".venv/bin/python scripts/check_extras.py"):script.index("fi")]  # no arguments
    assert "bash scripts/setup.sh vision" in whole
    assert ".venv-vision/bin/python -m pytest -q -m vision tests || status=$?" in whole
    assert '.venv/bin/python -m pytest -q -m "not vision" tests || status=$?' in whole
    assert whole[-1] == 'exit "$status"'
    assert script[-1] == 'exec .venv/bin/python -m pytest -m "not vision" "$@"'  # with arguments
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "VENV=.venv-vision" in setup and 'TORCH="torch==2.14.1 torchvision==0.29.1"' in setup
    assert "vision: needs torchvision" in (ROOT / "pyproject.toml").read_text()


def test_a_vision_test_fails_and_never_skips_where_torchvision_cannot_be_imported(tmp_path):
    # a plugin loaded before anything imports torchvision: as if it were not installed (an import raises
    # ModuleNotFoundError, importlib.util.find_spec answers None), whatever this environment has
    (tmp_path / "no_torchvision.py").write_text("import sys\n\nsys.modules['torchvision'] = None\n")
    test = "tests/test_vlm_qwen2_vl.py::test_the_real_processor_puts_the_image_in_the_prompt_and_its_pixels_reach_" \
           "the_vision_tower"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no_torchvision", "-p", "no:cacheprovider",
                           "-m", "vision", test], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 error" in done.stdout and "skipped" not in done.stdout, done.stdout
    assert "cannot import torchvision (" in done.stdout
    assert ".venv-vision/bin/python -m pytest -m vision" in done.stdout
