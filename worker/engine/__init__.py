"""The robustaudit audit engine: pure PyTorch, no web framework and no task queue.

The CLI, the Celery tasks and a bare GPU box all call :func:`worker.engine.runner.run_audit`.
"""

__version__ = "0.2.0"
