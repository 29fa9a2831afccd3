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


def test_ci_runs_exactly_the_readme_test_command_which_installs_everything_itself():
    command = "bash scripts/test.sh"
    for readme in (ENGLISH, JAPANESE):
        quick_start = readme.split("```bash\n", 1)[1].split("```", 1)[0]
        assert [line.split("#")[0].strip() for line in quick_start.splitlines()][1] == command
    ci_commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                   if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci_commands == [command]
    script = [line for line in (ROOT / "scripts" / "test.sh").read_text().splitlines() if not line.startswith("#")]
    steps = [next(i for i, line in enumerate(script) if step in line)  # Debian packages, the test extra, pytest
             for step in ("bash scripts/system_packages.sh", "bash scripts/setup.sh test", "-m pytest")]
    assert steps == sorted(steps)


def test_readme_pictures_exist_in_the_repo():
    import re

    pictures = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", README)
    assert {"docs/demo_history.png", "docs/demo_weights.png"} <= set(pictures)
    for picture in pictures:
        assert (ROOT / picture).read_bytes().startswith(b"\x89PNG"), picture
