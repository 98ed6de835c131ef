"""Workers: per-device ones (device binding, staggered model loading, readiness records) and judge
workers (`judging.py`: no model, threads that ask the judge)."""
