"""editbatch: batch image editing on one Celery worker per GPU."""

__version__ = "0.1.0"
