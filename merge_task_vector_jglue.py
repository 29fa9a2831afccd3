"""Optimize task-vector weights for JGLUE (lm-evaluation-harness) scores. See README.md."""
from task_vector_opt.cli.pipelines import JGLUE, script_main

if __name__ == "__main__":
    script_main(JGLUE)
