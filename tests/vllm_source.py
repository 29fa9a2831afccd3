"""vLLM's weight-loading name rules, read from vLLM's own source with ``ast`` (vLLM cannot run without a GPU).

The source is the installed vllm package when there is one, else the pinned vLLM wheel (a zip), downloaded once
with ``pip download --no-deps`` into .cache/vllm/. What is read, per architecture (vllm/model_executor/models):
the registry's (module, class); the class's ``hf_to_vllm_mapper = WeightsMapper(...)`` literal dicts (directly,
or through ``Other.hf_to_vllm_mapper`` in the same file); the module attributes its classes assign
(``self.qkv_proj = ...``); and the experts' checkpoint names (``ckpt_names=("w1", "w2", "w3")``).
``vllm_name`` applies the mapper in the order vLLM's WeightsMapper does (substr, stacked, prefix, suffix).
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from task_vector_opt.evaluation.vllm_backend import MIN_VLLM

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "vllm"
MODELS = "vllm/model_executor/models"


class VLLMSourceUnavailable(RuntimeError):
    """No installed vllm and its wheel could not be downloaded."""


@cache
def source_reader():
    """A function path -> text over vLLM's source: the installed package, else the pinned wheel."""
    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0]).parent
        return lambda path: (root / path).read_text(encoding="utf-8")
    wheels = sorted(CACHE.glob(f"vllm-{MIN_VLLM}-*.whl"))
    if not wheels:
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"vllm=={MIN_VLLM}",
                               "-d", str(CACHE)], capture_output=True, text=True)
        wheels = sorted(CACHE.glob(f"vllm-{MIN_VLLM}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise VLLMSourceUnavailable(f"pip download vllm=={MIN_VLLM} failed: {done.stderr.strip()[-300:]}")
    archive = zipfile.ZipFile(wheels[-1])
    return lambda path: archive.read(path).decode("utf-8")


@cache
def _tree(path: str) -> ast.Module:
    return ast.parse(source_reader()(path))


def architecture_module(architecture: str) -> tuple[str, str]:
    """(module file, class name) vLLM's registry gives an architecture."""
    for node in ast.walk(_tree(f"{MODELS}/registry.py")):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if isinstance(key, ast.Constant) and key.value == architecture and isinstance(value, ast.Tuple):
                module, cls = (ast.literal_eval(part) for part in value.elts[:2])
                return f"{MODELS}/{module}.py", cls
    raise KeyError(f"vLLM's registry has no {architecture}")


@dataclass
class Mapper:
    """The literal parts of a WeightsMapper."""

    substr: dict = field(default_factory=dict)
    stacked: dict = field(default_factory=dict)
    prefix: dict = field(default_factory=dict)
    suffix: dict = field(default_factory=dict)

    def map(self, key: str) -> str | None:
        for old, new in self.substr.items():
            if old in key:
                if new is None:
                    return None
                key = key.replace(old, new, 1)
        for old, (new, _shard) in self.stacked.items():
            if old in key:
                key = key.replace(old, new, 1)
        for old, new in self.prefix.items():
            if key.startswith(old):
                if new is None:
                    return None
                key = key.replace(old, new, 1)
        for old, new in self.suffix.items():
            if key.endswith(old):
                if new is None:
                    return None
                key = new.join(key.rsplit(old, 1))
        return key


def imported_models(path: str) -> dict[str, str]:
    """{name: file} of what a model file imports from other vLLM model files (``from .llama import ...``)."""
    found = {}
    for node in _tree(path).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module.removeprefix("vllm.model_executor.models.") if node.level == 0 else node.module
            if (node.level == 1 or node.module.startswith("vllm.model_executor.models.")) and "." not in module \
                    and module != "utils":
                found.update({alias.asname or alias.name: f"{MODELS}/{module}.py" for alias in node.names})
    return found


def related_files(path: str) -> list[str]:
    """The model file and the model files it imports from (a Mistral's layers are Llama's)."""
    return [path, *sorted(set(imported_models(path).values()))]


def mapper_of(path: str, cls: str) -> Mapper:
    """The class's hf_to_vllm_mapper, else its base classes' (an empty Mapper when none has one)."""
    classes = {node.name: node for node in _tree(path).body if isinstance(node, ast.ClassDef)}
    if cls not in classes:  # imported from another model file
        return mapper_of(imported_models(path)[cls], cls)
    for statement in classes[cls].body:
        if not (isinstance(statement, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "hf_to_vllm_mapper" for t in statement.targets)):
            continue
        value = statement.value
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):  # Other.hf_to_vllm_mapper
            return mapper_of(path, value.value.id)
        if isinstance(value, ast.Call):
            parts = {}
            for keyword in value.keywords:
                name = (keyword.arg or "").removeprefix("orig_to_new_")
                if name in ("substr", "stacked", "prefix", "suffix"):
                    parts[name] = ast.literal_eval(keyword.value)
            return Mapper(**parts)
    imported = imported_models(path)
    for base in classes[cls].bases:
        if isinstance(base, ast.Name) and (base.id in classes or base.id in imported):
            mapper = mapper_of(path, base.id)
            if mapper != Mapper():
                return mapper
    return Mapper()


def module_attributes(path: str) -> set[str]:
    """Every ``self.<name>`` a class of the file assigns (its submodules and parameters)."""
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        for target in targets:
            for leaf in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name) and leaf.value.id == "self":
                    names.add(leaf.attr)
    return names


def expert_checkpoint_names(path: str) -> set[str]:
    """The per-expert weight names a file's fused MoE loads (its ``ckpt_names=(...)``)."""
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.keyword) and node.arg == "ckpt_names":
            names.update(n for n in ast.literal_eval(node.value) if n)
    return names


def unknown_parts(name: str, attributes: set[str], expert_names: set[str]) -> list[str]:
    """The module names on a mapped parameter path that vLLM's model does not have (none: the path exists).

    The leaf (weight, bias) is a parameter of a vLLM layer and not checked; ``experts.<i>.<ckpt name>`` is what
    the fused MoE's loader takes."""
    parts = name.split(".")[:-1]
    unknown = []
    for index, part in enumerate(parts):
        if part.isdigit():
            continue
        if part in expert_names and index >= 2 and parts[index - 1].isdigit() and parts[index - 2] == "experts":
            continue
        if part not in attributes:
            unknown.append(part)
    return unknown
