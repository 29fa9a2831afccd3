"""The README documents every flag of every script, in English and in Japanese, and the quick start CI uses."""
from pathlib import Path

import pytest

from task_vector_opt.cli.pipelines import JGLUE, MT_BENCH, MT_BENCH_MOE_2, MT_BENCH_MOE_4
from task_vector_opt.outputs.report import parser as report_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENGLISH, JAPANESE = README.split('<a id="日本語"></a>')


def flags(parser):
    return sorted({opt for action in parser._actions for opt in action.option_strings
                   if opt.startswith("--") and opt != "--help"})


@pytest.mark.parametrize("parser", [JGLUE.command_line.parser(), MT_BENCH.command_line.parser(), MT_BENCH_MOE_2.command_line.parser(),
                                    MT_BENCH_MOE_4.command_line.parser(), report_parser()], ids=lambda p: p.prog)
def test_every_flag_is_documented_in_both_languages(parser):
    for flag in flags(parser):
        assert f"`{flag}`" in ENGLISH, f"{flag} missing from the English README"
        assert f"`{flag}`" in JAPANESE, f"{flag} missing from the Japanese README"


def test_ci_runs_the_readme_test_command():
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest -q tests"
    assert command in ENGLISH and command in JAPANESE
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in ci and ".venv/bin/python -m pytest -q tests" in ci


def test_readme_pictures_exist_in_the_repo():
    import re

    pictures = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", README)
    assert {"docs/demo_history.png", "docs/demo_weights.png"} <= set(pictures)
    for picture in pictures:
        assert (ROOT / picture).read_bytes().startswith(b"\x89PNG"), picture
