"""The docs: flag pages that match the parsers in both languages, links and anchors that resolve, and the README
questions answered one click away."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_flag_docs  # noqa: E402

PAGES = [ROOT / "README.md", ROOT / "README.ja.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.fixture(scope="module")
def parsers():
    return make_flag_docs.entry_parsers()


def listed_flags(page: str) -> set[str]:
    """The flags in the first column of the page's tables."""
    return {flag for line in page.splitlines() if line.startswith("| `--")
            for flag in re.findall(r"`(--[\w-]+)`", line.split(" | ")[0])}


def test_every_entry_script_is_documented(parsers):
    scripts = sorted(p.name for p in ROOT.glob("merge_task_vector_*.py"))
    assert [p.command.split()[-1] for p in parsers if p.short != make_flag_docs.REPORT] == scripts


def test_the_flag_pages_are_exactly_what_the_generator_writes_from_the_parsers(parsers):
    for lang, path in make_flag_docs.PAGES.items():
        assert path.read_text(encoding="utf-8") == make_flag_docs.render(lang, parsers), (
            f"{path.relative_to(ROOT)} is out of date: run .venv/bin/python scripts/make_flag_docs.py")


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_flag_of_every_parser_is_on_the_flag_page_and_every_listed_flag_exists(parsers, lang):
    page = make_flag_docs.PAGES[lang].read_text(encoding="utf-8")
    declared = set().union(*(make_flag_docs.option_flags(p.parser) for p in parsers))
    listed = listed_flags(page)
    assert declared - listed == set(), f"missing from {lang}/flags.md"
    assert listed - declared == set(), f"{lang}/flags.md lists flags no parser has"


def test_every_flag_has_japanese_help_and_a_missing_one_is_named(parsers):
    japanese = make_flag_docs.load_japanese()
    declared = set().union(*(make_flag_docs.option_flags(p.parser) for p in parsers))
    aliases = {name for p in parsers for action in p.parser._actions for name in action.option_strings[1:]}
    assert declared - aliases <= set(japanese["flags"])
    del japanese["flags"]["--weight_max"]
    with pytest.raises(make_flag_docs.MissingJapanese, match=r"--weight_max has no Japanese help.*flags_ja\.yaml"):
        make_flag_docs.render("ja", parsers, japanese)


def test_japanese_help_for_a_flag_that_no_longer_exists_is_refused(parsers):
    japanese = make_flag_docs.load_japanese()
    japanese["flags"]["--no_such_flag"] = "存在しないフラグ"
    with pytest.raises(make_flag_docs.MissingJapanese, match="--no_such_flag"):
        make_flag_docs.render("en", parsers, japanese)


def test_the_generator_check_mode_passes_on_the_committed_pages():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_flag_docs.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------ links

def without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters of any script kept), spaces -> -."""
    text = re.sub(r"<[^>]+>", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found | set(re.findall(r'<a id="([^"]+)"', text))


def links(page: Path) -> list[str]:
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", without_code(page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{target}: no such file"
        if anchor:
            assert anchor in anchors(file), f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}"


# ------------------------------------------------------------------------------------------------ questions

def section(file: Path, anchor: str) -> str:
    """The text under the heading whose anchor is ``anchor``, up to the next heading of the same or a higher level."""
    lines = file.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and slug(line.lstrip("#")) == anchor)
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level), len(lines))
    return "\n".join(lines[start:end])


# question -> (words of its line in README.md, in README.ja.md, what the linked section must contain in each)
QUESTIONS = {
    "resume a stopped run": ("resume a stopped run", "止まった実行を再開", ["rerun the same command"], ["同じコマンドを再実行"]),
    "Claude or a local server as the judge": ("Claude or a local server", "Claude やローカルのサーバー",
                                              ["claude-", "--judge_base_url", "localhost"], ["claude-", "--judge_base_url", "localhost"]),
    "GPU memory of a 4×7B MoE": ("4×7B MoE", "4×7B の MoE", ["4×7B", "58.5 GiB", "--vector_placement"], ["4×7B", "58.5 GiB", "--vector_placement"]),
    "what the verdict line means": ("verdict line mean", "判定）の行の意味", ["verdict", "not distinguishable", "interval"],
                                    ["verdict", "not distinguishable", "区間"]),
    "several workers": ("several workers", "複数のワーカー", ["--storage", "--search_only", "--finalize", "run_workers.sh"],
                        ["--storage", "--search_only", "--finalize", "run_workers.sh"]),
    "a second task vector": ("second task vector", "2 本目の Task Vector", ["--tuned_model a,b", "--merge_method"],
                             ["--tuned_model a,b", "--merge_method"]),
    "a custom lm-eval task": ("own lm-eval task", "独自の lm-eval タスク", ["--task_search_path", "--jglue_tasks"],
                              ["--task_search_path", "--jglue_tasks"]),
    "push the result to the hub": ("push the result to the Hugging Face hub", "hub にアップロード",
                                   ["--push_to_hub", "HF_TOKEN"], ["--push_to_hub", "HF_TOKEN"]),
}


@pytest.mark.parametrize("readme", ["README.md", "README.ja.md"])
@pytest.mark.parametrize("question", QUESTIONS)
def test_each_question_is_answered_one_click_from_the_readme(readme, question):
    en_words, ja_words, en_terms, ja_terms = QUESTIONS[question]
    words, terms = (en_words, en_terms) if readme == "README.md" else (ja_words, ja_terms)
    lines = [line for line in (ROOT / readme).read_text(encoding="utf-8").splitlines()
             if line.startswith("- ") and words in line]
    assert len(lines) == 1, f"{readme}: one question line with {words!r}"
    target = re.search(r"\]\(([^)]+)\)", lines[0]).group(1)
    path, _, anchor = target.partition("#")
    assert path.startswith("docs/en/" if readme == "README.md" else "docs/ja/"), target
    file = ROOT / path
    text = section(file, anchor) if anchor else file.read_text(encoding="utf-8")
    for term in terms:
        assert term.lower() in text.lower(), f"{target} does not mention {term!r}"
