"""Optimize task-vector weights for a vision-language target, scored on image questions. See README.md."""
from task_vector_opt.cli.pipelines import VLM, script_main

if __name__ == "__main__":
    script_main(VLM)
