"""Fine-tuning: the run's phases (``recipe.py``), the book's loop (``loop.py``), the frozen-trunk
cache, evaluation, checkpoints (``state.py``), controls, schedules, processes and memory."""
