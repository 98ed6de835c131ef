"""The scheduling core: release policies, replay and run metrics.

Plain Python only (no Celery, Redis or torch), so every rule here is tested
on its own and reused by the producer, the benchmark and the summary.
"""

from .metrics import Timing
from .policies import MODES, Assignment, Policy, make_policy, policy_class

__all__ = ["MODES", "Assignment", "Policy", "Timing", "make_policy", "policy_class"]
