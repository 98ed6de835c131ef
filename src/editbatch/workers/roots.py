"""The folders a worker may read images from and write outputs under.

Whoever can send a task chooses its `images` and `output_dir`; without a
limit, a task could make a worker read any image on its disks and write a
PNG anywhere it has rights. Each worker therefore checks every path against
its own roots before reading or writing. Paths are compared after
`os.path.realpath`, so `..` and symbolic links cannot step outside.

Roots come from `cluster.input_roots` / `cluster.output_roots` of the
worker's config. Left empty, they default to that config's own `output_dir`
and dataset folder (plus the folders its dataset's images sit in), which is
exactly what a run of that config needs; `editbatch run` with `broker: auto`
fills them in for its private workers the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


class OutsideRoots(PermissionError):
    """A task names a path outside the worker's roots."""


@dataclass(frozen=True)
class Roots:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, inputs: Iterable[str | Path], outputs: Iterable[str | Path]) -> "Roots":
        return cls(_normalise(inputs), _normalise(outputs))

    def check_input(self, path: str | Path) -> None:
        _check(path, self.inputs, "image")

    def check_output(self, path: str | Path) -> None:
        _check(path, self.outputs, "output")


def inside(path: str | Path, roots: Iterable[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _check(path: str | Path, roots: tuple[str, ...], what: str) -> None:
    if not inside(path, roots):
        listed = ", ".join(roots) or "none configured"
        raise OutsideRoots(f"{what} path {str(path)!r} is outside the worker's {what} roots ({listed}); "
                           f"see cluster.{'input' if what == 'image' else 'output'}_roots")


def _normalise(paths: Iterable[str | Path]) -> tuple[str, ...]:
    """Real paths, without the ones already inside another root."""
    real = sorted({os.path.realpath(p) for p in paths})
    kept: list[str] = []
    for path in real:
        if not inside(path, kept):
            kept.append(path)
    return tuple(kept)


def roots_for(config, image_paths: Iterable[Path] | None = None) -> Roots:
    """The roots of a run config: configured ones, else its output folder and its inputs' folders.

    `image_paths` are the dataset's images when the caller has read them (the
    producer); a worker reads its own config's dataset file if it can.
    """
    cluster = config.cluster
    outputs = cluster.output_roots or [config.output_dir]
    if cluster.input_roots:
        return Roots.of(cluster.input_roots, outputs)
    if image_paths is None:
        image_paths = _dataset_images(config)
    return Roots.of([config.dataset.path.parent, *(p.parent for p in image_paths)], outputs)


def _dataset_images(config) -> list[Path]:
    from ..dataset import load_dataset
    from ..errors import ConfigError

    try:
        items = load_dataset(config.dataset.path, config.dataset.format, config.dataset.limit)
    except ConfigError:  # no dataset file on this machine: its folder alone
        return []
    return [image for item in items for image in item.images + ([item.target] if item.target else [])]


# ---------------------------------------------------------------- producer side


def check_run_paths(config, items, source: str) -> None:
    """Refuse what the run's own configured roots would refuse, before anything is sent.

    An output folder outside `cluster.output_roots` is a config error (every
    item would fail); an image outside `cluster.input_roots` makes its item
    invalid, as a missing file does.
    """
    from ..errors import ConfigError

    roots = Roots.of(config.cluster.input_roots, config.cluster.output_roots)
    if roots.outputs and not inside(config.output_dir, roots.outputs):
        raise ConfigError(source, "output_dir", f"{config.output_dir} is outside cluster.output_roots "
                                                f"({', '.join(roots.outputs)})")
    if not roots.inputs:
        return
    for item in items:
        if item.valid:
            outside = [p for p in item.images + ([item.target] if item.target else []) if not inside(p, roots.inputs)]
            if outside:
                item.error = f"image {outside[0]} is outside cluster.input_roots ({', '.join(roots.inputs)})"


def with_worker_roots(config, out_dir: Path, items):
    """The config that private (`broker: auto`) workers read, with their roots filled in."""
    roots = roots_for(config.model_copy(update={"output_dir": out_dir}),
                      [p for item in items if item.valid for p in item.images + ([item.target] if item.target else [])])
    cluster = config.cluster.model_copy(update={"input_roots": [Path(p) for p in roots.inputs],
                                                "output_roots": [Path(p) for p in roots.outputs]})
    return config.model_copy(update={"cluster": cluster})


def confine(images: Iterable[str | Path], output: str | Path, roots: Roots) -> None:
    """The task-side check: every input and the output file inside the roots, or OutsideRoots."""
    for image in images:
        roots.check_input(image)
    roots.check_output(output)


# ---------------------------------------------------------------- coordinator side


def workers_refusing(records: dict[str, dict | None], inputs: Iterable[str | Path],
                     outputs: Iterable[str | Path]) -> list[str]:
    """The live workers (queue -> presence record) whose published roots do not hold every path given.

    Each is named with its roots, for a message. Workers that published no roots (not loaded yet) are
    left out: they are asked again when they are.
    """
    inputs, outputs = list(inputs), list(outputs)
    refusing = []
    for queue, record in sorted(records.items()):
        if not record or "output_roots" not in record:
            continue
        if all(inside(p, record["input_roots"]) for p in inputs) and \
                all(inside(p, record["output_roots"]) for p in outputs):
            continue
        refusing.append(f"{queue} (reads under {', '.join(record['input_roots']) or 'nothing'}; "
                        f"writes under {', '.join(record['output_roots']) or 'nothing'})")
    return refusing


def outside_published(config: dict, settings: dict, workers: dict[str, dict | None] | None = None) -> str | None:
    """Client side: why a job's config lies outside the roots its coordinator published or those of a live
    worker (queue -> presence record), or None."""
    dataset = (config.get("dataset") or {}).get("path") if isinstance(config.get("dataset"), dict) else None
    output = config.get("output_dir")
    if dataset and settings.get("input_roots") and not inside(dataset, settings["input_roots"]):
        return f"dataset.path: {dataset} is outside the service's input roots ({', '.join(settings['input_roots'])})"
    if output and settings.get("output_roots") and not inside(output, settings["output_roots"]):
        return f"output_dir: {output} is outside the service's output roots ({', '.join(settings['output_roots'])})"
    for field, path, reads in (("dataset.path", dataset, True), ("output_dir", output, False)):
        refusing = workers_refusing(workers or {}, [path] if reads else [], [] if reads else [path]) if path else []
        if refusing:
            return f"{field}: {path} is outside the roots of worker(s) {'; '.join(refusing)}"
    return None
