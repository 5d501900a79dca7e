"""Backbone weights, described by data.

``--weights`` takes one of:

* ``imagenet`` -- torchvision's ``ResNet18_Weights.IMAGENET1K_V1``, fetched once
  into torch's download cache (``$TORCH_HOME/hub/checkpoints``) and
  hash-checked against the prefix in its file name;
* ``random`` -- torchvision's own initialisation under a fixed seed;
* a path -- a ``state_dict`` file, loaded with ``weights_only=True``.

Whatever the source, :func:`state_dict_sha256` fingerprints the tensors that
are actually used; the cache stores it so feature spaces never mix.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from tlkit.errors import WeightsError


@dataclass(frozen=True)
class WeightsSource:
    """Where a named set of weights comes from: the torchvision weights enum as data."""

    name: str
    enum: str
    url: str

    @property
    def file_name(self) -> str:
        return os.path.basename(self.url)

    @property
    def sha256_prefix(self) -> str:
        # torchvision names its files "<arch>-<first hex digits of sha256>.pth"
        match = re.search(r"-([a-f0-9]+)\.", self.file_name)
        return match.group(1) if match else ""


_IMAGENET_ENUM = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
NAMED_WEIGHTS = {
    "imagenet": WeightsSource(
        name="imagenet", enum="ResNet18_Weights.IMAGENET1K_V1", url=_IMAGENET_ENUM.url
    ),
}
DOWNLOAD_TIMEOUT_S = 20


@dataclass(frozen=True)
class LoadedWeights:
    """A resolved ``--weights`` value: the tensors plus what to record about them."""

    id: str
    state_dict: dict
    sha256: str


def state_dict_sha256(state_dict: dict) -> str:
    """A fingerprint of the tensors (names, dtypes, shapes and bytes), file format aside."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(source: WeightsSource, target: Path) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # fail in seconds when offline, not minutes
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(source.url, str(target), hash_prefix=source.sha256_prefix, progress=True)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise WeightsError(
            f"cannot download {source.enum} from {source.url} ({getattr(exc, 'reason', exc)}); "
            f"offline? copy {source.file_name} to {target.parent}/ (set TORCH_HOME to change that folder), "
            f"or pass --weights PATH_TO_STATE_DICT or --weights random"
        ) from None
    except RuntimeError as exc:  # torch.hub's hash mismatch
        raise WeightsError(f"download of {source.url} failed its hash check: {exc}") from None
    finally:
        socket.setdefaulttimeout(previous)


def load_named(source: WeightsSource) -> LoadedWeights:
    target = checkpoint_dir() / source.file_name
    if not target.exists():
        _download(source, target)
    actual = _file_sha256(target)
    if not actual.startswith(source.sha256_prefix):
        raise WeightsError(
            f"{target} does not match the sha256 prefix {source.sha256_prefix} of {source.enum} "
            f"(got {actual[:12]}); delete it to download again"
        )
    state_dict = _load_state_dict_file(target)
    return LoadedWeights(id=f"torchvision:{source.enum}", state_dict=state_dict, sha256=state_dict_sha256(state_dict))


def _load_state_dict_file(path: Path) -> dict:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise WeightsError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    return state_dict


def random_weights(seed: int) -> LoadedWeights:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        state_dict = torchvision.models.resnet18(weights=None).state_dict()
    finally:
        torch.random.set_rng_state(generator_state)
    return LoadedWeights(id=f"random:seed={seed}", state_dict=state_dict, sha256=state_dict_sha256(state_dict))


def resolve_weights(spec: str, seed: int = 0) -> LoadedWeights:
    """Turn a ``--weights`` value into tensors, or raise :class:`WeightsError`."""
    if spec in NAMED_WEIGHTS:
        return load_named(NAMED_WEIGHTS[spec])
    if spec == "random":
        return random_weights(seed)
    path = Path(spec)
    if not path.is_file():
        raise WeightsError(
            f"--weights {spec!r} is neither {', '.join([*NAMED_WEIGHTS, 'random'])} nor an existing state_dict file"
        )
    state_dict = _load_state_dict_file(path)
    return LoadedWeights(id=f"file:{path.name}", state_dict=state_dict, sha256=state_dict_sha256(state_dict))
