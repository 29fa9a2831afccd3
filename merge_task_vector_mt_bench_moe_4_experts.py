"""Build a Mixtral-style MoE of 4 merged experts in memory and optimize it on an MT-Bench-style bench. See README.md."""
from task_vector_opt.cli.pipelines import MT_BENCH_MOE_4, script_main

if __name__ == "__main__":
    script_main(MT_BENCH_MOE_4)
