"""Optimize task-vector weights for an MT-Bench-style bench graded by an LLM judge. See README.md."""
from task_vector_opt.cli.pipelines import main_mt_bench

if __name__ == "__main__":
    main_mt_bench()
