"""Job orchestration: runners that start a job's stages, the worker that watches them, the reconciler."""
