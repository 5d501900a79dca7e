"""Rebuild a run's whole model and apply it to image files.

* a head run (``fit-head``): the backbone recorded in the cache's provenance
  (weights, checked against their sha256, and the transform), then the head;
* a scratch or fine-tuned run (``train-scratch``): the trained ResNet-18 from
  ``model.pt`` with the run's evaluation transform.

Images are decoded in worker processes; a file that cannot be decoded is
reported with its reason and the others are still predicted.
"""

from __future__ import annotations

import json
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tlkit.data.decode import DEFAULT_MAX_PIXELS
from tlkit.data.discovery import find_images
from tlkit.data.reader import read_batches
from tlkit.data.transforms import TransformSpec
from tlkit.device import select_device
from tlkit.errors import TlkitError
from tlkit.metrics import predict_from_proba
from tlkit.runs import MODEL, HeadPart, RunConfig, read_config


@dataclass
class Predictor:
    """A run's model as one function: a batch of transformed images -> class probabilities."""

    run_dir: Path
    class_names: list[str]
    transform: TransformSpec
    device: torch.device
    predict_proba: object  # callable(torch.Tensor (N, 3, H, W)) -> np.ndarray (N, n_classes)
    description: str


@dataclass
class Predictions:
    class_names: list[str]
    paths: list[str] = field(default_factory=list)  # as the user named them (files found in folders: joined)
    proba: np.ndarray | None = None  # (N, n_classes) float64
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def labels(self) -> list[str]:
        if self.proba is None or not len(self.proba):
            return []
        return [self.class_names[i] for i in predict_from_proba(self.proba)]


def _spec(value) -> TransformSpec:
    try:
        return TransformSpec.from_json(value if isinstance(value, str) else json.dumps(value))
    except (TypeError, ValueError, KeyError) as exc:
        raise TlkitError(f"the run records a transform tlkit cannot rebuild ({exc})") from None


def _head_predictor(run_dir: Path, config: RunConfig, device, weights_path) -> Predictor:
    from tlkit.embed.mapper import FeatureMapper
    from tlkit.embed.recorded import recorded_backbone, recorded_precision, recorded_weights

    try:
        from tlkit.heads import load_head
    except ImportError:
        raise TlkitError(f"{run_dir} is a fit-head run, but this tlkit has no tlkit.heads to load it") from None
    provenance = config.part.cache_provenance
    class_names = list(config.class_names)
    head = load_head(run_dir)
    # The backbone the cache was embedded with: its weights, and its precision with the int8
    # calibration the cache stores, so the head sees the features it was trained on.
    precision, calibration = recorded_precision(provenance)
    if precision.name == "int8":
        device = torch.device("cpu")  # int8 kernels are CPU kernels; the head runs on numpy
    mapper = FeatureMapper(recorded_weights(provenance, weights_path).state_dict, device, precision, calibration,
                           recorded_backbone(provenance))
    columns = np.asarray(getattr(head, "classes_", np.arange(len(class_names))), dtype=np.int64)

    def predict_proba(images: torch.Tensor) -> np.ndarray:
        features = mapper(images)
        partial = np.asarray(head.predict_proba(features), dtype=np.float64)
        proba = np.zeros((len(features), len(class_names)))
        proba[:, columns] = partial  # a class the head never saw gets probability 0
        return proba

    return Predictor(run_dir, class_names, _spec(provenance.transform), device, predict_proba,
                     f"{config.describe_model()} on {provenance.describe()} features")


def _network_predictor(run_dir: Path, config: RunConfig, device) -> Predictor:
    from tlkit.baseline.model import load_trained

    path = run_dir / MODEL
    if not path.exists():
        raise TlkitError(f"{run_dir} has no {MODEL}: the run is unfinished or damaged")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated files
        raise TlkitError(f"{path} cannot be read: {str(exc).splitlines()[0]}") from None
    class_names = list(config.class_names)
    model = load_trained(state_dict, len(class_names)).to(device=device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict_proba(images: torch.Tensor) -> np.ndarray:
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        return torch.softmax(model(images).float(), dim=1).double().cpu().numpy()

    return Predictor(run_dir, class_names, _spec(config.part.transform), device, predict_proba,
                     f"ResNet-18 ({config.kind})")


def load_predictor(run_dir, *, weights=None, device: str = "auto") -> Predictor:
    """The model a run folder describes, ready to predict; one-line errors for anything else."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    torch_device = select_device(device)
    if isinstance(config.part, HeadPart):
        return _head_predictor(run_dir, config, torch_device, weights)
    return _network_predictor(run_dir, config, torch_device)


def expand_inputs(inputs) -> tuple[list[str], list[tuple[str, str]]]:
    """Files to predict (folders searched recursively for images) and (path, reason) for missing ones."""
    files, errors = [], []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = find_images(path)
            if not found:
                errors.append((str(raw), "folder holds no images"))
            files.extend(str(p) for p in found)
        elif path.is_file():
            files.append(str(raw))  # named explicitly: tried whatever its extension
        else:
            errors.append((str(raw), "no such file or folder"))
    return files, errors


def predict_images(predictor: Predictor, inputs, *, batch_size: int = 32, workers: int = 2,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: bool = False) -> Predictions:
    """Predict every image in ``inputs``; undecodable files become entries of ``errors``."""
    from tqdm.auto import tqdm

    files, errors = expand_inputs(inputs)
    out = Predictions(predictor.class_names, errors=errors)
    chunks, order = [], []
    workers = min(workers, max(len(files) // batch_size, 0), os.cpu_count() or 1)
    # closing: a failing model stops the decoding workers at once, not when the interpreter exits
    with tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar, \
            closing(read_batches(files, predictor.transform, batch_size, workers, max_pixels)) as batches:
        for batch in batches:
            if len(batch.indices):
                chunks.append(predictor.predict_proba(batch.images))
                order.extend(batch.indices)
            out.errors.extend((files[i], reason) for i, reason in batch.errors)
            bar.update(len(batch.indices) + len(batch.errors))
    out.paths = [files[i] for i in order]
    out.proba = np.concatenate(chunks) if chunks else np.zeros((0, len(predictor.class_names)))
    return out
