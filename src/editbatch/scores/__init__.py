"""Scoring edits: metrics computed on the workers right after each edit, a VLM judge, presets and statistics.

`metrics.py` (pixel), `embeddings.py` (CLIP, DINOv2) and `item.py` (the per-item scorer a worker loads once)
run next to the model; `judge/` asks an OpenAI-compatible API; `presets.py` names what each benchmark scores
and how it aggregates; `stats.py` turns per-item scores into `scores.json`; `command.py` is `editbatch score`.
"""
