"""Library internals behind one door each: every use of a library's private names or module globals is in the
module of that library here, and tests/test_library_doors.py fails when an installed version changes one.

- ``optuna_internals``: a user attribute on a trial this process did not ask for; the enqueue key of studies
  written before the scale stage kept its scales in user attributes.
- ``lm_eval_internals``: lm-eval's request progress bar (a module global), HFLM's batch-size cache and its token
  scoring and batch-size detection (private methods a subclass overrides or calls).
- ``vllm_internals``: the environment variable that keeps vLLM's engine in this process.
- ``process``: the settings that hold for the whole process (Optuna's log level), made once per entry point.

The rule: code outside this package uses only the libraries' public names; a private name it still needs goes
through a function (or a checked name) exported here. Each door module imports its library lazily, so importing
it costs nothing where the library is not installed (vLLM).
"""
