"""Study identity: which settings define a study, declared as field metadata next to each setting.

A setting that cannot change the merge or its score (a batch size, a timeout, a cache path) is declared with
``outside_identity()``; one that counts only in some cases with ``identity_when(...)``. ``study_identity`` walks
the settings recursively, and the default study name hashes what it returns.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

IDENTITY = "study_identity"  # field metadata: False (never counts) or a predicate on the owning settings
IDENTITY_NAME = "identity_name"  # field metadata: the field's key ("" merges a dict field into its owner)


def outside_identity(**field_kwargs: Any) -> Any:
    """``dataclasses.field`` of a setting that does not change the merge or its score: changing it resumes the
    same study."""
    return dataclasses.field(metadata={IDENTITY: False}, **field_kwargs)


def identity_when(condition: Callable[[Any], bool], **field_kwargs: Any) -> Any:
    """``dataclasses.field`` of a setting that is part of the study only when ``condition(settings)`` holds
    (e.g. the seed of random routers, which hidden-state routers never read)."""
    return dataclasses.field(metadata={IDENTITY: condition}, **field_kwargs)


def identity_named(name: str, **field_kwargs: Any) -> Any:
    """``dataclasses.field`` that counts under ``name`` (the flag's name where the field's differs), so the
    identity reads like the command line and like merge_recipe.json's "inputs"."""
    return dataclasses.field(metadata={IDENTITY_NAME: name}, **field_kwargs)


def _counts(settings: Any, spec: dataclasses.Field) -> bool:
    rule = spec.metadata.get(IDENTITY, True)
    return rule(settings) if callable(rule) else bool(rule)


def study_identity(value: Any) -> Any:
    """The part of ``value`` (settings dataclasses, nested in dicts and lists) that defines a study, as JSON data.

    A dataclass with a single field that counts stands for that field's value (a ModelSource is its path or id).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        identity: dict[str, Any] = {}
        for spec in dataclasses.fields(value):
            if not _counts(value, spec):
                continue
            name = spec.metadata.get(IDENTITY_NAME, spec.name)
            part = study_identity(getattr(value, spec.name))
            if name == "" and isinstance(part, dict):
                identity.update(part)
            else:
                identity[name] = part
        return next(iter(identity.values())) if len(identity) == 1 else identity
    if isinstance(value, dict):
        return {str(key): study_identity(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [study_identity(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def flatten(identity: Any, prefix: str = "") -> dict[str, Any]:
    """{"evaluator.judge.model": "gpt-4", ...}: the leaves of an identity, for naming what differs."""
    if isinstance(identity, dict):
        leaves: dict[str, Any] = {}
        for key, item in identity.items():
            leaves.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    return {prefix: identity}


def differences(mine: Any, theirs: Any) -> list[tuple[str, Any, Any]]:
    """(name, their value, my value) for each leaf that differs; a leaf only one side has counts too."""
    ours, other = flatten(mine), flatten(theirs)
    missing = object()
    return [(name, other.get(name), ours.get(name)) for name in sorted(set(ours) | set(other))
            if ours.get(name, missing) != other.get(name, missing)]
