"""Optuna's internals that the search still needs, behind one door (tests/test_library_doors.py checks them).

Optuna has no public setter for a user attribute of a trial that another (dead) process asked for: a ``Trial``
object exists only in the process that asked. ``recover_dead_workers`` needs one, to record why it fails such a
trial, so ``set_trial_user_attr`` writes through the study's storage, as ``Trial.set_user_attr`` itself does.

The scale stage keeps each enqueued trial's scales in its user attributes (public: ``enqueue_trial(params,
user_attrs=...)``; Optuna's retry callback copies them to a retried trial). A study written before that holds a
waiting trial's scales only in Optuna's own enqueue key (``system_attrs["fixed_params"]``): ``enqueued_params``
reads it there, so such a study resumes without running its waiting points twice.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

ENQUEUE_KEY = "fixed_params"  # the system attribute Study.enqueue_trial writes the enqueued parameters to


def set_trial_user_attr(study: optuna.Study, trial: optuna.trial.FrozenTrial, key: str, value: Any) -> None:
    """Set a user attribute of ``trial`` (running, possibly asked by another process) in ``study``'s storage.

    Raises what the storage raises for a trial that has finished meanwhile (``UpdateFinishedTrialError``,
    ``RuntimeError``)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def enqueued_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The parameters a trial was enqueued with, as Optuna keeps them ({} for a trial that was not enqueued)."""
    return dict(trial.system_attrs.get(ENQUEUE_KEY) or {})
