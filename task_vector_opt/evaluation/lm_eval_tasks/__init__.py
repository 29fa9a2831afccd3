"""lm-eval task naming and data for the JGLUE evaluator: no model code here.

* ``task_list.parse_task_list`` reads ``--jglue_tasks`` (``name`` or ``name:weight``, comma-separated).
* ``table.TASK_FAMILIES`` is the one table that maps the original's Stability-style names
  (``jcommonsenseqa-1.1-0.3``, ``jnli-1.3-0.2``, ...) to lm-eval's ``ja_leaderboard_*`` tasks.
* ``resolution.resolve_tasks`` turns the names into lm-eval task names, raising UsageError with close matches.
* ``local_data.write_local_tasks`` generates lm-eval task YAMLs that run the ``ja_leaderboard_*`` JGLUE tasks
  (same prompts, metrics and few-shot) on a local copy of the official JGLUE repository; their
  ``process_docs`` hooks are ``jglue_local_hooks.py``, copied beside them.
* ``scoring.primary_metric`` / ``weighted_mean`` are the scoring rules.
"""
