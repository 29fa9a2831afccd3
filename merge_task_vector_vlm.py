"""Optimize task-vector weights for a vision-language target, scored on image questions. See README.md."""
from task_vector_opt.cli.pipelines import main_vlm

if __name__ == "__main__":
    main_vlm()
