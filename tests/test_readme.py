"""The READMEs: short, linked to each other, with the quick start CI runs (the same two commands as ever)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGLISH = (ROOT / "README.md").read_text(encoding="utf-8")
JAPANESE = (ROOT / "README.ja.md").read_text(encoding="utf-8")
QUICK_START = {"README.md": ("## Quick start\n", ENGLISH), "README.ja.md": ("## クイックスタート\n", JAPANESE)}


def quick_start_commands(readme: str) -> list[str]:
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]  # the first bash block is the quick start
    return [line.split("#")[0].strip() for line in block.splitlines()]


def test_the_quick_start_is_the_first_bash_block_demo_first_then_tests_in_both_languages():
    for name, (heading, readme) in QUICK_START.items():
        assert readme.index(heading) < readme.index("```bash\n"), name
        assert quick_start_commands(readme) == ["bash scripts/demo.sh", "bash scripts/test.sh"], name


def test_ci_runs_exactly_the_readme_test_command_which_installs_everything_itself():
    command = "bash scripts/test.sh"
    for readme in (ENGLISH, JAPANESE):
        assert quick_start_commands(readme)[1] == command
    ci_commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                   if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci_commands == [command]
    script = [line for line in (ROOT / "scripts" / "test.sh").read_text().splitlines() if not line.startswith("#")]
    steps = [next(i for i, line in enumerate(script) if step in line)  # Debian packages, the test extra, pytest
             for step in ("bash scripts/system_packages.sh", "bash scripts/setup.sh test", "-m pytest")]
    assert steps == sorted(steps)


def test_each_readme_links_to_the_other_language_at_the_top_and_stays_short():
    assert "(README.ja.md)" in "\n".join(ENGLISH.splitlines()[:5])
    assert "(README.md)" in "\n".join(JAPANESE.splitlines()[:5])
    for name, (_, readme) in QUICK_START.items():  # the reference lives in docs/; a feature adds a page there
        assert len(readme.splitlines()) <= 150, f"{name} has {len(readme.splitlines())} lines; move detail to docs/"


def test_the_demo_pictures_exist_and_are_shown():
    shown = {}
    for page in [ROOT / "README.md", ROOT / "README.ja.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text(encoding="utf-8")):
            picture = (page.parent / target).resolve()
            assert picture.read_bytes().startswith(b"\x89PNG"), (page, target)
            shown.setdefault(picture.relative_to(ROOT).as_posix(), set()).add(page.relative_to(ROOT).as_posix())
    assert "README.md" in shown["docs/demo_history.png"] and "README.ja.md" in shown["docs/demo_history.png"]
    assert {"docs/en/benchmarks.md", "docs/ja/benchmarks.md"} <= shown["docs/demo_weights.png"]
