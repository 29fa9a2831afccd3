"""Check that the project and each of its extras resolve against the package registry, without installing anything.

Usage: python scripts/check_extras.py [project dir, default: this repository]

The extras are resolved with the base dependencies by ``uv pip compile``: a resolver that reads each wheel's
metadata from the registry and downloads no wheel, so the vllm extra's CUDA wheels (several GB) stay on the
registry. pip's own ``install --dry-run`` does the same but takes about a minute and a half per resolution on a
2-core machine, uv a few seconds. Only the extras no other extra includes are resolved (here ``all`` and
``vllm``): a set of versions that satisfies an extra satisfies every extra it includes (``all`` names
``task-vector-opt[demo,...,test]``), so each of those resolves too; the bare project is included in every extra.
The vllm extra is resolved for x86-64 Linux, the only platform its CUDA wheels exist for; the others for the
interpreter that runs this script.

Prints one line per resolution (what it resolved to) and exits 1 naming each extra that does not resolve.
Run by scripts/test.sh before the full test suite; tests/test_installs.py checks that it fails as it should.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: huggingface_hub brings tomli there
    import tomli as tomllib  # type: ignore[no-redef]

REPO_ROOT = Path(__file__).resolve().parent.parent
# Extras that exist for one platform only, and the platform they are resolved for.
PLATFORM_OF_EXTRA = {"vllm": "x86_64-manylinux_2_28"}
BARE = ""  # the project without extras


@dataclass
class Resolution:
    extra: str
    resolved: dict[str, str]  # normalized name -> version; empty when it did not resolve
    error: str = ""

    def line(self, direct: list[str]) -> str:
        label = f"extra {self.extra!r}" if self.extra else "the project"
        if self.error:
            return f"DOES NOT RESOLVE: {label}: {self.error}"
        shown = ", ".join(f"{name} {self.resolved[name]}" for name in direct if name in self.resolved)
        return f"resolves: {label}: {len(self.resolved)} packages" + (f" ({shown})" if shown else "")


def normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirement_name(requirement: str) -> str:
    for stop in "[<>=!~;( ":
        requirement = requirement.split(stop, 1)[0]
    return normalized(requirement.strip())


def extras_of(pyproject: dict) -> dict[str, list[str]]:
    """{extra: its direct requirements' names} for each extra that no other extra includes; {"": []} when the
    project has no extras."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    included = set()  # extras that another extra names, as "<project>[a,b]"
    for requirements in optional.values():
        for requirement in requirements:
            if requirement_name(requirement) == normalized(project["name"]) and "[" in requirement:
                included.update(e.strip() for e in requirement.split("[", 1)[1].split("]", 1)[0].split(","))
    extras = {extra: [requirement_name(r) for r in requirements if requirement_name(r) != normalized(project["name"])]
              for extra, requirements in optional.items() if extra not in included}
    return extras or {BARE: []}


def uv_command() -> list[str]:
    """uv from this interpreter's environment (the test extra installs it)."""
    uv = Path(sys.executable).with_name("uv")
    return [str(uv)] if uv.exists() else [sys.executable, "-m", "uv"]


def resolve(project_dir: Path, extra: str, cache_dir: Path) -> Resolution:
    command = [*uv_command(), "pip", "compile", str(project_dir / "pyproject.toml"), "--quiet", "--no-header",
               "--no-annotate", "--python", sys.executable, "--cache-dir", str(cache_dir)]
    if extra:
        command += ["--extra", extra]
    if extra in PLATFORM_OF_EXTRA:
        command += ["--python-platform", PLATFORM_OF_EXTRA[extra]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=project_dir)
    if done.returncode != 0:
        reason = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return Resolution(extra, {}, " ".join(reason[:6])[:1200] or f"uv exited {done.returncode}")
    resolved = {}
    for line in done.stdout.splitlines():
        if "==" in line and not line.startswith(("#", " ")):
            name, version = line.split(";", 1)[0].split("==", 1)
            resolved[requirement_name(name)] = version.strip()
    return Resolution(extra, resolved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project_dir", nargs="?", type=Path, default=REPO_ROOT)
    project_dir = parser.parse_args(argv).project_dir.resolve()
    extras = extras_of(tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8")))
    # A cache of its own, removed after: uv unpacks sdists it reads metadata from (unidic-lite: 250 MB) anew on
    # every run, so a lasting cache would grow by that much per run.
    with tempfile.TemporaryDirectory(prefix="check_extras_") as cache_dir, ThreadPoolExecutor() as pool:
        results = list(pool.map(lambda extra: resolve(project_dir, extra, Path(cache_dir)), extras))
    for result in results:
        print(result.line(extras[result.extra]))
    failed = [result.extra or "the project" for result in results if result.error]
    if failed:
        print(f"error: not resolvable against the package registry: {', '.join(failed)}; fix the version ranges in "
              f"{project_dir / 'pyproject.toml'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
