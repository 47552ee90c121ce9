"""robustaudit worker side: the audit engine (``worker.engine``) and, later, Celery tasks."""
