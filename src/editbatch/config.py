"""Run configuration: YAML in, one validated `RunConfig` out.

Precedence is defaults < YAML file < ``--set key=value`` overrides; the merged
result is validated once, here, and every error names the file and the field.
The seed project's file shape (``diffusion_model: {type, params: {device_ids,
enable_batch_sync}}``) is translated to this schema before validation.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .devices import Device, expand_devices
from .errors import ConfigError
from .models.registry import canonical_name, model_names
from .scheduling.policies import MODES
from .output_folder import missing_parent_problem, refused_output_dir

SEED_MODEL_PATH = "Qwen/Qwen-Image-Edit"
# 100 megapixels: an 8192x8192 or 10000x10000 input passes; decoded as RGB it is
# 300 MB, so a tiny compressed "bomb" cannot make a worker allocate gigabytes.
DEFAULT_MAX_PIXELS = 100_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Strict):
    path: Path
    format: Literal["auto", "jsonl", "csv"] = "auto"
    limit: int | None = Field(default=None, ge=1, description="use only the first N items")
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1, description="larger images are invalid, never decoded "
                                                                         "(width x height, read from the header)")


class LoraConfig(_Strict):
    path: str
    scale: float = 1.0
    weight_name: str | None = None


class ModelConfig(_Strict):
    type: str
    path: str = "tiny"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the pipeline call")
    lora: LoraConfig | None = None
    offload: Literal["none", "model", "sequential"] = "none"
    compile: bool = False
    attention_backend: str | None = None
    pipeline_class: str | None = Field(default=None, description="for type 'diffusers': the pipeline class name")
    load_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra from_pretrained keyword arguments")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        name = canonical_name(value)
        if name is None:
            close = difflib.get_close_matches(value, model_names(), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown model type {value!r}{hint} (known: {', '.join(model_names())})")
        return name


class ClusterConfig(_Strict):
    broker: str = "auto"
    devices: list[int | str] = Field(default_factory=lambda: ["cpu", "cpu"], min_length=1)
    load_concurrency: int = Field(default=1, ge=1)
    cpu_threads: int = Field(default=1, ge=1, description="torch threads of each CPU worker (fixed, for "
                                                         "outputs that do not depend on the worker count)")
    task_events: bool = Field(default=True, description="send Celery task events (Flower shows tasks live)")
    prefetch: int = Field(default=2, ge=1, le=8, description="tasks a worker holds, one on the device at a time "
                                                            "(2: the next task is at hand, no fetch between edits, and "
                                                            "one item's files are committed while the next computes)")
    ready_timeout_s: float = Field(default=1800.0, gt=0, description="how long the producer waits for every worker")
    restarts: int = Field(default=2, ge=0, description="broker: auto: times a worker that died (or hung) is "
                                                       "started again")
    sick_after: int = Field(default=3, ge=0, description="a worker whose model raised CUDA errors on this many items "
                                                         "in a row retires (0: never)")
    namespace: str = Field(default="editbatch", pattern=r"^[A-Za-z0-9_.-]+$")
    output_roots: list[Path] = Field(default_factory=list, description="folders a worker may write under "
                                                                       "(empty: output_dir)")
    input_roots: list[Path] = Field(default_factory=list, description="folders a worker may read images from "
                                                                      "(empty: the dataset's folders)")

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if value != "auto" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be 'auto' or a redis:// URL")
        return value

    @field_validator("output_roots", "input_roots")
    @classmethod
    def _roots(cls, value: list[Path], info) -> list[Path]:
        for root in value:
            # Writing into system folders is never needed; reading anywhere ('/' in input_roots) is an explicit choice.
            if info.field_name == "output_roots" and refused_output_dir(root):
                raise ValueError(f"{root} would let workers write into system folders: list the run folders")
            if os.path.exists(root) and not os.path.isdir(root):
                raise ValueError(f"{root} is a file, not a folder")
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[int | str]) -> list[int | str]:
        expand_devices(value)  # raises ValueError with the reason
        return value

    def device_slots(self) -> list[Device]:
        return expand_devices(self.devices)


class ScheduleConfig(_Strict):
    mode: str = Field(default="sync", description=f"how items are released: {', '.join(MODES)}")
    seed: int = 42
    task_timeout_s: float = Field(default=600.0, gt=0)
    visibility_timeout_s: float | None = Field(
        default=None, gt=0, description="Redis re-delivers an unacknowledged message after this long; default: "
                                        "the larger of 6 h and 3x task_timeout_s (it must exceed the longest edit)")
    retries: int = Field(default=1, ge=0, le=10, description="extra attempts for an item that failed or was lost, "
                                                             "on another device where the mode allows it")
    max_skew: int = Field(default=1, ge=0, description="window mode: batches the newest item may run ahead")
    max_in_flight: int = Field(default=4096, ge=1, description="tasks held in Redis at once (nosync/balanced)")
    take_back: bool = Field(default=True, description="balanced/window with prefetch 2+: a task held, not started, by "
                                                      "a busy device moves to a device that went idle")
    barrier: Literal["worker", "producer"] = Field(
        default="worker", description="sync mode: hold the batch barrier on the workers (next batch pre-queued) "
                                      "or in the producer (next group sent after the last result)")

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in MODES:
            close = difflib.get_close_matches(value, MODES, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown mode {value!r}{hint} (known: {', '.join(MODES)})")
        return value


class JobsConfig(_Strict):
    """`editbatch serve`: how many jobs run at once and how many may wait."""

    max_running: int = Field(default=1, ge=1, le=16, description="jobs run at the same time")
    max_queued: int = Field(default=100, ge=1, le=10000, description="jobs waiting; more are refused at submit")
    queue: str = Field(default="jobs", pattern=r"^[A-Za-z0-9_.-]+$", description="the coordinator's Celery queue")
    keep_ended_days: float = Field(default=30, gt=0, description="records of ended jobs are deleted after this long")


class JudgeConfig(_Strict):
    """evaluate.judge: an OpenAI-compatible chat API asked once per item (see scores/judge/)."""

    url: str = Field(description="base URL of the API, e.g. https://api.openai.com/v1 (POST <url>/chat/completions)")
    model: str = Field(description="a dated model name (gpt-4.1-2025-04-14): undated names drift")
    undated_ok: bool = Field(default=False, description="accept a model name without a date (a local server)")
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="environment variable with the key")
    template: Path | None = Field(default=None, description="prompt template file (default: the preset's own)")
    workers: int = Field(default=4, ge=1, le=64, description="judge threads")
    requests_per_minute: float = Field(default=60, gt=0, description="for all judge workers together")
    tokens_per_minute: float = Field(default=0, ge=0, description="for all judge workers together (0: no limit)")
    burst: float | None = Field(default=None, gt=0, description="requests the bucket holds (default rpm/10)")
    temperature: float = Field(default=0.0, ge=0)
    seed: int | None = Field(default=42, description="sent where the server takes one")
    max_tokens: int = Field(default=400, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    retries: int = Field(default=6, ge=0, le=50)
    backoff_s: float = Field(default=1.0, ge=0)
    max_backoff_s: float = Field(default=30.0, ge=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _dated(self) -> "JudgeConfig":
        if not self.undated_ok and not re.search(r"\d{4}-?\d{2}-?\d{2}", self.model):
            raise ValueError(f"model {self.model!r} has no date: name a dated snapshot, or set undated_ok: true")
        return self


class EvaluateConfig(_Strict):
    """evaluate: what to score (see scores/)."""

    preset: str | None = Field(default=None, description="gedit, imgedit, kris, magicbrush, emu")
    metrics: list[str] = Field(default_factory=list, description="worker-side metrics (see README, Scores)")
    clip: str = Field(default="tiny", description="CLIP model: hub id, local folder, or tiny (random, offline)")
    dino: str = Field(default="tiny", description="DINOv2 model: hub id, local folder, or tiny (random, offline)")
    group_by: str | None = Field(default=None, description="dataset column the categories come from")
    judge: JudgeConfig | None = None
    cache_dir: Path | None = Field(default=None, description="score cache (default: <output_dir>/.scores-cache)")
    bootstrap: int = Field(default=1000, ge=100, le=100000, description="resamples of each 95% interval")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        from .scores.presets import PRESETS

        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r} (known: {', '.join(PRESETS)})")
        return value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from .scores.item import METRICS

        for name in value:
            if name not in METRICS:
                close = difflib.get_close_matches(name, METRICS, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(METRICS)})"
                raise ValueError(f"unknown metric {name!r}{hint}")
        return value

    @model_validator(mode="after")
    def _judge_given(self) -> "EvaluateConfig":
        from .scores.presets import PRESETS

        if self.preset and PRESETS[self.preset].uses_judge and self.judge is None:
            raise ValueError(f"preset {self.preset!r} asks a judge: add evaluate.judge (url, model)")
        if self.judge is not None and self.judge.template is not None:
            from .scores.judge.stage import check_template

            try:
                check_template(Path(self.judge.template).read_text(encoding="utf-8"))
            except OSError as exc:
                raise ValueError(f"judge.template {self.judge.template}: cannot read ({exc.strerror})") from None
            except ValueError as exc:
                raise ValueError(f"judge.template {self.judge.template}: {exc}") from None
        return self

    def all_metrics(self) -> list[str]:
        from .scores.presets import PRESETS

        own = list(PRESETS[self.preset].metrics) if self.preset else []
        return list(dict.fromkeys(own + self.metrics))

    def categories_from(self) -> str:
        from .scores.presets import PRESETS

        return self.group_by or (PRESETS[self.preset].group_by if self.preset else "category")


class RunConfig(_Strict):
    name: str = "run"
    dataset: DatasetConfig
    output_dir: Path
    model: ModelConfig
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    evaluate: EvaluateConfig | None = None

    @field_validator("output_dir")
    @classmethod
    def _writable_place(cls, value: Path) -> Path:
        problem = refused_output_dir(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _speeds_match_devices(self) -> "RunConfig":
        speeds = self.model.params.get("device_speed") if self.model.type == "simulated" else None
        if speeds is not None and len(speeds) != len(self.cluster.devices):
            raise ValueError(
                f"model.params.device_speed has {len(speeds)} entries for {len(self.cluster.devices)} devices"
            )
        return self

    @property
    def devices(self) -> list[Device]:
        return self.cluster.device_slots()


# ---------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                check_dataset: bool = True) -> RunConfig:
    """Read, translate, override and validate a config file; raise ConfigError on any problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, None, "config file not found") from None
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise ConfigError(source, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not check_dataset and isinstance(data, dict):
        data = worker_placeholders(data, path)
    return config_from_mapping(data, source, overrides, check_dataset=check_dataset)


PLACEHOLDER_DATASET = "no-dataset.jsonl"  # a worker or cluster config reads no dataset of its own


def worker_placeholders(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A worker's (or `serve`'s) config may leave out the dataset and the output folder: jobs bring theirs.

    Its roots then say where tasks may read and write (see workers/roots.py); without a dataset or roots
    a worker could read nothing, so the missing roots are named instead of a missing dataset.
    """
    data = dict(data)
    cluster = data.get("cluster") if isinstance(data.get("cluster"), dict) else {}
    if "dataset" not in data:
        if not cluster.get("input_roots"):
            raise ConfigError(str(path), "dataset", "required but missing (a worker config without a dataset "
                                                    "needs cluster.input_roots and cluster.output_roots)")
        data["dataset"] = {"path": str(Path(path).resolve().parent / PLACEHOLDER_DATASET)}
    if "output_dir" not in data:
        if not cluster.get("output_roots"):
            raise ConfigError(str(path), "output_dir", "required but missing (a worker config without an "
                                                       "output_dir needs cluster.output_roots)")
        data["output_dir"] = str(Path(path).resolve().parent / "runs")
    return data


def config_from_mapping(data: Any, source: str, overrides: list[str] | tuple[str, ...] = (), *,
                        check_dataset: bool = True) -> RunConfig:
    """The checks of `load_config` for a config that arrives as a mapping (a submitted job)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, None, "top level must be a mapping of keys to values")
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        apply_override(data, item)
    data = translate_seed_config(data)
    config = validate_config(data, source)
    if check_dataset and not config.dataset.path.is_file():
        raise ConfigError(source, "dataset.path", f"dataset file not found: {config.dataset.path}")
    if check_dataset:  # a run or validate: the output folder must be possible (workers only read this file)
        problem = missing_parent_problem(config.output_dir)
        if problem:
            raise ConfigError(source, "output_dir", problem)
    return config


def validate_config(data: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelled key also leaves the real one missing: name the misspelling first, it has the hint.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        ordered = [first, *(e for e in errors if e is not first)]
        field, message = _describe(ordered[0])
        # One line, every problem on it: fixing one at a time and running again is slow.
        others = [f"{f}: {m}" if f else m for f, m in map(_describe, ordered[1:])]
        if others:
            message += "; and " + "; ".join(others)
        raise ConfigError(source, field, message) from None


def _describe(err: dict[str, Any]) -> tuple[str | None, str]:
    """One pydantic error as (field, message)."""
    field = ".".join(str(p) for p in err["loc"]) or None
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
        parent_loc, key = err["loc"][:-1], str(err["loc"][-1])
        known = _known_keys(parent_loc)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {close[0]!r}?"
        elif known:
            message += f" (allowed: {', '.join(known)})"
    elif err["type"] == "missing":
        message = "required but missing"
    elif "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    return field, message


def validate_evaluate(data: Any, source: str) -> EvaluateConfig:
    """An `evaluate:` section on its own (`editbatch score --config`), with the same one-line messages."""
    try:
        RunConfig.model_validate({"dataset": {"path": "-"}, "output_dir": "-", "model": {"type": "simulated"},
                                  "evaluate": data})
    except ValidationError:
        validate_config({"dataset": {"path": "-"}, "output_dir": "-", "model": {"type": "simulated"},
                         "evaluate": data}, source)
    return EvaluateConfig.model_validate(data)


def _known_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in loc:
        info = model.model_fields.get(str(part))
        if info is None or not isinstance(info.annotation, type) or not issubclass(info.annotation, BaseModel):
            # Optional[Model] annotations: look inside the union.
            args = getattr(info.annotation, "__args__", ()) if info else ()
            inner = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if not inner:
                return []
            model = inner[0]
        else:
            model = info.annotation
    return list(model.model_fields)


def translate_seed_config(data: dict[str, Any]) -> dict[str, Any]:
    """Map the seed project's ``diffusion_model`` block onto our schema.

    ``type: multi_gpu_qwen_image_edit`` becomes the Qwen-Image-Edit adapter,
    ``params.device_ids`` the cluster devices and ``params.enable_batch_sync``
    the schedule mode (true: sync, false: nosync). Any other params are
    pipeline call arguments, as in the seed.
    """
    if "diffusion_model" not in data:
        return data
    data = dict(data)
    seed_block = data.pop("diffusion_model") or {}
    if not isinstance(seed_block, dict):
        return {**data, "diffusion_model": seed_block}  # let validation name it
    params = dict(seed_block.get("params") or {})
    model = dict(data.get("model") or {})
    model.setdefault("type", seed_block.get("type", "multi_gpu_qwen_image_edit"))
    if "model_path" in params or "path" in seed_block:
        model.setdefault("path", params.pop("model_path", None) or seed_block.get("path"))
    else:
        model.setdefault("path", SEED_MODEL_PATH)
    cluster = dict(data.get("cluster") or {})
    if "device_ids" in params:
        cluster.setdefault("devices", params.pop("device_ids"))
    schedule = dict(data.get("schedule") or {})
    if "enable_batch_sync" in params:
        schedule.setdefault("mode", "sync" if params.pop("enable_batch_sync") else "nosync")
    if "base_seed" in params:
        schedule.setdefault("seed", params.pop("base_seed"))
    model.setdefault("params", params)
    data.update(model=model, cluster=cluster, schedule=schedule)
    data.setdefault("name", "seed")
    data.setdefault("output_dir", "runs/seed")
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``key.sub=value`` override; the value is parsed as YAML (``[0,1]``, ``true``, ``2.5``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", item, "expected KEY=VALUE, e.g. schedule.mode=nosync")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError("--set", key, f"{part!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def dump_config(config: RunConfig, *, redact: bool = False) -> str:
    """The effective config as YAML; `redact` hides the broker password (workers get the URL by environment)."""
    data = config.model_dump(mode="json")
    if redact:
        data["cluster"]["broker"] = mask_password(data["cluster"]["broker"])
    return yaml.safe_dump(data, sort_keys=False)


def mask_password(url: str) -> str:
    """``redis://:secret@host`` -> ``redis://:***@host``; URLs without a password are unchanged."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
