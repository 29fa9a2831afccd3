"""Build a Mixtral-style MoE of 2 merged experts in memory and optimize it on an MT-Bench-style bench. See README.md."""
from task_vector_opt.cli.pipelines import main_mt_bench_moe_2

if __name__ == "__main__":
    main_mt_bench_moe_2()
