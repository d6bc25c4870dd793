"""Tasks: conversations to train on and to be scored on (task.py says what a task is; one file per task)."""
