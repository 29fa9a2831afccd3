"""Optimize task-vector weights for an MT-Bench-style bench graded by an LLM judge. See README.md."""
from task_vector_opt.cli.pipelines import MT_BENCH, script_main

if __name__ == "__main__":
    script_main(MT_BENCH)
