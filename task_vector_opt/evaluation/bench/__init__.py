"""MT-Bench data in FastChat's llm_judge layout: questions, reference answers, judge prompts. No model code.

``files`` reads the JSONL files (row schemas in ``schemas``), ``prompts`` chooses and fills the judge
prompts as FastChat's single-answer grading does, ``check`` checks a whole bench up front, and
``settings`` turns the flags into settings with the holdout split. Everything a user can get wrong is
raised as a UsageError naming the flag and, for file contents, the file and line number. A question's
inline ``reference`` field wins over the reference answer files.
"""
