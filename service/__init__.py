"""robustaudit service side: the HTTP API, the job store, storage, the beat and the console script."""

from worker.engine import __version__

__all__ = ["__version__"]
