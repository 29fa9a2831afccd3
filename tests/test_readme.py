"""The README documents every flag of every script, in English and in Japanese, and the quick start CI uses."""
from pathlib import Path

import pytest

from task_vector_opt.pipelines import JGLUE, MT_BENCH, MT_BENCH_MOE_2, MT_BENCH_MOE_4

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENGLISH, JAPANESE = README.split('<a id="日本語"></a>')


def flags(pipeline):
    return sorted({opt for action in pipeline.parser()._actions for opt in action.option_strings
                   if opt.startswith("--") and opt != "--help"})


@pytest.mark.parametrize("pipeline", [JGLUE.cli, MT_BENCH.cli, MT_BENCH_MOE_2.cli, MT_BENCH_MOE_4.cli],
                         ids=lambda p: p.prog)
def test_every_flag_is_documented_in_both_languages(pipeline):
    for flag in flags(pipeline):
        assert f"`{flag}`" in ENGLISH, f"{flag} missing from the English README"
        assert f"`{flag}`" in JAPANESE, f"{flag} missing from the Japanese README"


def test_ci_runs_the_readme_test_command():
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest -q tests"
    assert command in ENGLISH and command in JAPANESE
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in ci and ".venv/bin/python -m pytest -q tests" in ci
