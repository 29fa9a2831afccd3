"""Optimize task-vector weights for JGLUE (lm-evaluation-harness) scores. See README.md."""
from task_vector_opt.cli.pipelines import main_jglue

if __name__ == "__main__":
    main_jglue()
