"""Write docs/en/flags.md and docs/ja/flags.md from the entry scripts' argparse parsers.

The parsers are the one source of every flag, its default and its English help. The Japanese help lives in
task_vector_opt/cli/flags_ja.yaml, keyed by flag name. After adding or changing a flag:

    .venv/bin/python scripts/make_flag_docs.py            # rewrite both pages
    .venv/bin/python scripts/make_flag_docs.py --check    # exit 1 when a page is out of date (what the tests check)

A flag without Japanese text stops the script with a message naming the flag and its English help.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file: import this checkout's package
    sys.path.insert(0, str(ROOT))

JAPANESE_HELP = ROOT / "task_vector_opt" / "cli" / "flags_ja.yaml"
PAGES = {"en": ROOT / "docs" / "en" / "flags.md", "ja": ROOT / "docs" / "ja" / "flags.md"}
ENTRY_PREFIX = "merge_task_vector_"
REPORT = "report"  # the report tool's short name, beside the entry scripts'
ARGPARSE_GROUPS = ("positional arguments", "options", "optional arguments")
ALL_LABEL = {"en": "all", "ja": "すべて"}


class MissingJapanese(ValueError):
    """The Japanese text of a flag, group or script is missing or cannot be told apart: say which, and where."""


@dataclass
class Parser:
    short: str  # "jglue", "mt_bench_moe_2_experts", ... or "report"
    command: str  # how a user runs it
    launcher: str | None
    parser: argparse.ArgumentParser


def entry_parsers(root: Path = ROOT) -> list[Parser]:
    """Every merge_task_vector_*.py at the repository root (its Pipeline found by importing it), then the report tool.

    A new entry script is picked up by its file name; a new flag by its parser.
    """
    from task_vector_opt.cli.pipelines import Pipeline
    from task_vector_opt.outputs.report import parser as report_parser

    parsers = []
    for script in sorted(root.glob(f"{ENTRY_PREFIX}*.py")):
        spec = importlib.util.spec_from_file_location(f"_entry_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # the scripts run only under __main__
        pipelines = {id(v): v for v in vars(module).values() if isinstance(v, Pipeline)}
        if len(pipelines) != 1:
            raise SystemExit(f"{script.name}: expected one Pipeline in its namespace, found {len(pipelines)}")
        pipeline = next(iter(pipelines.values()))
        short = script.stem[len(ENTRY_PREFIX):]
        launcher = f"run_merge_{short}.sh"
        parsers.append(Parser(short, f"python {script.name}", launcher if (root / launcher).is_file() else None,
                              pipeline.command_line.parser()))
    parsers.append(Parser(REPORT, "python -m task_vector_opt.outputs.report", None, report_parser()))
    return parsers


def option_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every --flag (aliases included) a parser accepts, --help aside."""
    return {opt for action in parser._actions for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"}


@dataclass
class Row:
    """One flag as one or more scripts declare it (same help and default)."""

    names: tuple[str, ...]
    help: str
    default: str | None  # None: no default shown
    required: bool
    switch: bool
    choices: tuple[str, ...] | None
    scripts: list[str] = field(default_factory=list)

    @property
    def flag(self) -> str:
        return self.names[0]


DEFAULT_SUFFIX = re.compile(r" \(default: (.*)\)$")  # what cli.flags.Flag appends to a help string


def row_of(action: argparse.Action) -> Row:
    help_text = action.help or ""
    default = None
    suffix = DEFAULT_SUFFIX.search(help_text)
    if suffix:  # the value --help prints; MoE scripts keep dtype None until the config is read, then this
        help_text, default = help_text[:suffix.start()], suffix.group(1)
    elif action.default not in (None, False) and not action.required:
        default = str(action.default)
    switch = isinstance(action, argparse._StoreTrueAction)
    return Row(tuple(action.option_strings), help_text, default, action.required, switch,
               tuple(str(c) for c in action.choices) if action.choices else None)


@dataclass
class Section:
    title: str  # the argparse group's title, or the report tool's short name
    rows: list[Row] = field(default_factory=list)


def sections(parsers: list[Parser]) -> list[Section]:
    """The merge scripts' flags by argparse group (a flag declared alike by several scripts is one row), then one
    section for the report tool."""
    merged: dict[str, Section] = {}
    out: list[Section] = []
    for entry in parsers:
        is_report = entry.short == REPORT
        for group in entry.parser._action_groups:
            title = REPORT if is_report else group.title
            section = merged.get(title)
            for action in group._group_actions:
                if not action.option_strings or "--help" in action.option_strings:
                    continue
                if section is None:
                    section = merged[title] = Section(title)
                    out.append(section)
                row = row_of(action)
                same = next((r for r in section.rows if (r.names, r.help, r.default, r.required, r.choices)
                             == (row.names, row.help, row.default, row.required, row.choices)), None)
                if same is None:
                    section.rows.append(row)
                    same = row
                same.scripts.append(entry.short)
    # argparse's own groups ("options": --dry_run) after the scripts' groups, the report tool last
    return sorted(out, key=lambda s: (s.title == REPORT, s.title in ARGPARSE_GROUPS))


def load_japanese(path: Path = JAPANESE_HELP) -> dict:
    import yaml

    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    for key in ("scripts", "groups", "flags"):
        data.setdefault(key, {})
    return data


def japanese_help(japanese: dict, section: Section, row: Row) -> str:
    """The Japanese text of one row: flags[name] (a string), or flags[name][script] / flags[name]["default"]."""
    entry = japanese["flags"].get(row.flag)
    if entry is None:
        raise MissingJapanese(
            f"{row.flag} has no Japanese help: add it to {JAPANESE_HELP.relative_to(ROOT)} under 'flags:', e.g.\n"
            f"  {row.flag}: <Japanese text>\n"
            f"English help ({', '.join(row.scripts)}): {row.help}\n"
            "then run: .venv/bin/python scripts/make_flag_docs.py")
    if isinstance(entry, str):
        return entry
    for script in row.scripts:
        if script in entry:
            return entry[script]
    if "default" in entry:
        return entry["default"]
    raise MissingJapanese(f"{row.flag} ({', '.join(row.scripts)}): {JAPANESE_HELP.relative_to(ROOT)} has no text for "
                          "these scripts; add one under their name or under 'default'")


def check_japanese(japanese: dict, parsers: list[Parser], found: list[Section]) -> None:
    """Every flag, group and script has Japanese text; no text is left for a flag that no longer exists; a flag whose
    English help differs between scripts has a Japanese text per variant."""
    known = set().union(*(option_flags(p.parser) for p in parsers))
    stale = sorted(set(japanese["flags"]) - known)
    if stale:
        raise MissingJapanese(f"{JAPANESE_HELP.relative_to(ROOT)} has Japanese help for flags no parser declares: "
                              f"{', '.join(stale)}; remove them (or fix their names)")
    shorts = {p.short for p in parsers}
    for flag, entry in japanese["flags"].items():
        if isinstance(entry, dict) and set(entry) - shorts - {"default"}:
            raise MissingJapanese(f"{flag}: {JAPANESE_HELP.relative_to(ROOT)} names unknown scripts "
                                  f"{sorted(set(entry) - shorts - {'default'})}; use {sorted(shorts)} or 'default'")
    for parser in parsers:
        if parser.short not in japanese["scripts"]:
            raise MissingJapanese(f"script {parser.short} ({parser.command}) has no Japanese description: add it to "
                                  f"{JAPANESE_HELP.relative_to(ROOT)} under 'scripts:'")
    for section in found:
        if section.title not in japanese["groups"]:
            raise MissingJapanese(f"flag group {section.title!r} has no Japanese title: add it to "
                                  f"{JAPANESE_HELP.relative_to(ROOT)} under 'groups:'")
        texts: dict[str, tuple[str, str]] = {}
        for row in section.rows:
            text = japanese_help(japanese, section, row)
            earlier = texts.get(text)
            if earlier and earlier[0] == row.flag and earlier[1] != row.help:
                raise MissingJapanese(f"{row.flag}: its English help differs between scripts ({', '.join(row.scripts)} "
                                      f"say {row.help!r}); give each its Japanese text in "
                                      f"{JAPANESE_HELP.relative_to(ROOT)} under the script's name")
            texts[text] = (row.flag, row.help)


CODE_SPAN = re.compile(r"(`[^`]*`)")
FLAG_IN_TEXT = re.compile(r"(?<![\w`-])(--[a-z][A-Za-z0-9_]*)")
ESCAPES = {"*": r"\*", "<": "&lt;", ">": "&gt;", "|": r"\|"}


def markdown(text: str) -> str:
    """Help text as a table cell: flags in code spans, characters markdown would eat escaped."""
    parts = []
    for part in CODE_SPAN.split(text):
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            parts.append(part.replace("|", r"\|"))
            continue
        part = "".join(ESCAPES.get(ch, ch) for ch in part)
        parts.append(FLAG_IN_TEXT.sub(r"`\1`", part))
    return "".join(parts)


WORDS = {
    "en": {"required": "(required)", "off": "off", "none": "—", "values": "Values: {}.", "sep": ", ", "space": " ",
           "columns": "| flag | default | scripts | meaning |"},
    "ja": {"required": "（必須）", "off": "オフ", "none": "—", "values": "値: {}。", "sep": "、", "space": "",
           "columns": "| フラグ | 既定値 | スクリプト | 意味 |"},
}

INTRO = {
    "en": """\
<!-- Generated by scripts/make_flag_docs.py from the scripts' parsers and task_vector_opt/cli/flags_ja.yaml. Do not edit. -->
[日本語](../ja/flags.md) | [Docs](../../README.md#questions)

# Every flag

This page is generated from the scripts' own parsers, so it lists exactly what `--help` prints. To add or
change a flag, see [Development: adding a flag](development.md#adding-a-flag).

- `--target_model` (`--target_model_1` and `--target_model_2` in the MoE scripts), `--base_model` and
  `--tuned_model` must be given; a missing one stops the run before any model loads.
- A flag that takes a decimal number needs a finite one: `nan` and `inf` are refused like any other bad value.
- Every input error is one line naming the flag and the fix, with exit code 2, before any model is loaded.
- In a launcher (`run_merge_*.sh` / `.bat`), flags without a variable of their own go into `EXTRA_ARGS`
  ([Launchers](launchers.md)).
- The scripts column says which scripts take the flag (`all`: every `merge_task_vector_*.py`).

## Scripts

| script | launcher | what it does |
|---|---|---|
""",
    "ja": """\
<!-- scripts/make_flag_docs.py がスクリプトのパーサーと task_vector_opt/cli/flags_ja.yaml から生成。直接編集しないこと。 -->
[English](../en/flags.md) | [ドキュメント一覧](../../README.ja.md#よくある質問)

# フラグ一覧

このページは各スクリプトのパーサーから生成しているので、`--help` の表示と必ず一致します。フラグを追加・変更する
ときの手順は[開発: フラグの追加](development.md#フラグの追加)にあります。

- `--target_model`（MoE スクリプトでは `--target_model_1` と `--target_model_2`）、`--base_model`、`--tuned_model` は
  必須です。指定がなければ、モデルを読み込む前に止まります。
- 小数を取るフラグには有限の数を渡してください。`nan` や `inf` は、ほかの不正な値と同じく拒否されます。
- 入力の誤りは、モデルを読み込む前に、フラグ名と直し方を示す 1 行のエラー（終了コード 2）になります。
- ランチャー（`run_merge_*.sh` / `.bat`）で専用の変数がないフラグは `EXTRA_ARGS` に書きます（[ランチャー](launchers.md)）。
- 「スクリプト」の列は、そのフラグを受け付けるスクリプトです（`すべて` は `merge_task_vector_*.py` の全部）。

## スクリプト

| スクリプト | ランチャー | 内容 |
|---|---|---|
""",
}


def render(lang: str, parsers: list[Parser] | None = None, japanese: dict | None = None) -> str:
    parsers = parsers if parsers is not None else entry_parsers()
    japanese = japanese if japanese is not None else load_japanese()
    found = sections(parsers)
    check_japanese(japanese, parsers, found)
    words = WORDS[lang]
    merge_scripts = [p.short for p in parsers if p.short != REPORT]
    lines = [INTRO[lang].rstrip("\n")]
    for parser in parsers:
        about = parser.parser.description if lang == "en" else japanese["scripts"][parser.short]
        launcher = f"`{parser.launcher}` / `.bat`" if parser.launcher else words["none"]
        lines.append(f"| `{parser.command}` | {launcher} | {markdown(about)} |")
    for section in found:
        if section.title == REPORT:
            title = japanese["groups"][REPORT] if lang == "ja" else "Report tool"
            heading = f"{title}: `python -m task_vector_opt.outputs.report`"
        else:
            heading = section.title[:1].upper() + section.title[1:] if lang == "en" else japanese["groups"][section.title]
        lines += ["", f"## {heading}", "", words["columns"], "|---|---|---|---|"]
        for row in section.rows:
            names = ", ".join(f"`{name}`" for name in row.names)
            if row.required:
                default = words["required"]
            elif row.switch:
                default = words["off"]
            elif row.default is None:
                default = words["none"]
            else:
                default = f"`{row.default}`"
            scripts = (ALL_LABEL[lang] if row.scripts == merge_scripts
                       else words["sep"].join(row.scripts))
            meaning = markdown(row.help if lang == "en" else japanese_help(japanese, section, row))
            if row.choices:
                meaning += words["space"] + words["values"].format(words["sep"].join(f"`{c}`" for c in row.choices))
            lines.append(f"| {names} | {default} | {scripts} | {meaning} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description="Write docs/en/flags.md and docs/ja/flags.md from the parsers.")
    cli.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page is out of date")
    args = cli.parse_args(argv)
    parsers, japanese = entry_parsers(), load_japanese()
    try:
        pages = {lang: render(lang, parsers, japanese) for lang in PAGES}
    except MissingJapanese as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = [path for lang, path in PAGES.items()
             if not path.is_file() or path.read_text(encoding="utf-8") != pages[lang]]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run .venv/bin/python scripts/make_flag_docs.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for lang, path in PAGES.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pages[lang], encoding="utf-8")
    print(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in PAGES.values())}"
          + (f" ({len(stale)} changed)" if stale else " (unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
