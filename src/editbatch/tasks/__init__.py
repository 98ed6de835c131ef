"""The Celery task and its payload contract (`contract.py`), callable by other services."""

from .contract import TASK_NAME, EditTask

__all__ = ["TASK_NAME", "EditTask"]
