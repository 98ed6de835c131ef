"""The Celery tasks and their payload contracts, callable by other services: `editbatch.edit` (`contract.py`)
and `editbatch.judge` (`judge_contract.py`)."""

from .contract import TASK_NAME, EditTask

__all__ = ["TASK_NAME", "EditTask"]
