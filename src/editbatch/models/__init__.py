"""Model adapters: one file per model family, found through `registry`."""

from .base import EditModel, EditRequest, EditResult
from .registry import get_model_class, model_names

__all__ = ["EditModel", "EditRequest", "EditResult", "get_model_class", "model_names"]
