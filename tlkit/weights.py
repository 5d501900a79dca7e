"""Backbone weights as a value: what ``--weights`` names, its provenance id, its tensors, its transform.

``--weights`` takes one of:

* a name from :data:`PRETRAINED` -- ``imagenet`` is the backbone's ``DEFAULT``
  torchvision weights enum (for the default resnet18: ``ResNet18_Weights.IMAGENET1K_V1``),
  fetched once into torch's download cache (``$TORCH_HOME/hub/checkpoints``) and
  hash-checked against the prefix in its file name, with that enum's own transform;
  for a ``timm:NAME`` backbone, timm's default pretrained tag (``timm:NAME.TAG``, fetched
  by timm from the Hugging Face hub) with timm's own transform;
* ``random`` or ``random:SEED`` -- torchvision's own initialisation under a
  fixed seed (a bare ``random`` takes the command's ``--seed``);
* a path -- a ``state_dict`` file, loaded with ``weights_only=True``.

::

    w = Weights.parse("random", seed=3)     # or Weights.parse("imagenet"), Weights.parse("my.pt")
    w.id                                    # 'random:seed=3' -- what a cache records
    Weights.from_id(w.id) == w              # and back, from a cache's provenance
    loaded = w.load()                       # loaded.state_dict, loaded.sha256
    w.transform                             # the TransformSpec these weights expect
    Weights.parse("imagenet", backbone="resnet50").id   # 'torchvision:ResNet50_Weights.IMAGENET1K_V2'
    Weights.random(3).load(backbone="resnet50")         # random and file weights take the backbone at load

This is the only place that builds or reads a weights id. It lives at the top
of the package, not under ``embed/``, because four commands resolve weights:
``embed``, ``verify --data`` (the weights a cache records), ``predict`` (the
weights a head's cache was made with) and ``train-scratch --finetune``.

Whatever the source, :func:`state_dict_sha256` fingerprints the tensors that
are actually used; the cache stores it so feature spaces never mix. torch is
imported only to load tensors: parsing and naming weights stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import socket
import urllib.error
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from tlkit.data.transforms import TransformSpec
from tlkit.errors import WeightsError

DOWNLOAD_TIMEOUT_S = 20
RANDOM = "random"


@dataclass(frozen=True)
class Pretrained:
    """Weights that torchvision publishes, as data: the entry of its weights enum that tlkit uses.

    Modelled on torchvision's ``Weights`` (``torchvision/models/_api.py``), which
    carries a url, a hash and the transforms: the url is read from torchvision's
    own enum (its file name holds the sha256 prefix torchvision checks), and
    the transform is the one the weights were trained for.

    An entry may carry its ``int8`` variant: the same network published already
    quantized, which ``--precision int8`` uses instead of calibrating the fp32
    weights (see :meth:`Weights.at_precision`).
    """

    name: str  # the --weights value
    module: str  # the torchvision module that defines the enum
    enum: str  # "<enum class>.<member>"; the provenance id is "torchvision:<enum>"
    transform: TransformSpec
    quantized: bool = False  # a quantized state dict (packed int8 weights), loaded and fingerprinted as a file
    int8: "Pretrained | None" = None  # the published quantized variant of these weights, if any

    @property
    def url(self) -> str:
        enum_class, member = self.enum.split(".")
        return getattr(getattr(importlib.import_module(self.module), enum_class), member).url

    @property
    def file_name(self) -> str:
        return os.path.basename(self.url)

    @property
    def sha256_prefix(self) -> str:
        # torchvision names its files "<arch>-<first hex digits of sha256>.pth", and its quantized
        # ones "<arch>_fbgemm_<digits>.pth": with an underscore torch.hub's own name-based check would
        # be skipped, so the prefix is always read here and passed to the download and the check.
        match = re.search(r"[-_]([a-f0-9]{8,})\.", self.file_name)
        return match.group(1) if match else ""

    def variants(self) -> list["Pretrained"]:
        """This entry and the variants it carries."""
        return [self] + ([self.int8] if self.int8 is not None else [])


# The named weights, by --weights value. A new entry (say, another torchvision backbone's
# weights) is one more value here; a precision variant is one more field of its entry.
PRETRAINED: dict[str, Pretrained] = {
    "imagenet": Pretrained(
        name="imagenet", module="torchvision.models", enum="ResNet18_Weights.IMAGENET1K_V1",
        transform=TransformSpec(),  # torchvision's ImageClassification(crop_size=224): resize 256, crop 224, bilinear
        int8=Pretrained(
            name="imagenet", module="torchvision.models.quantization", enum="ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1",
            transform=TransformSpec(),  # the same eval transform as the fp32 weights
            quantized=True,
        ),
    ),
}
# Random and file weights were trained for nothing in particular: they get the ImageNet eval
# transform, so their features are comparable with those of the ImageNet weights.
DEFAULT_TRANSFORM = TransformSpec()

_RANDOM_SPEC = re.compile(rf"{RANDOM}:(-?\d+)")
_RANDOM_ID = re.compile(rf"{RANDOM}:seed=(-?\d+)")


@dataclass(frozen=True)
class Weights:
    """One choice of backbone weights; frozen, so it can be compared, stored and passed around."""

    kind: Literal["torchvision", "timm", "random", "file"]
    name: str = ""  # torchvision: the enum ("ResNet18_Weights.IMAGENET1K_V1"); timm: "arch.tag"; file: the file's name
    seed: int = 0  # random: the seed of torchvision's initialisation
    path: Path | None = None  # file: where to read it; None when only its name is known (from an id)

    # -- making one --------------------------------------------------------------------------------

    @classmethod
    def pretrained(cls, name: str, backbone: str = "resnet18") -> Weights:
        """The named weights of ``backbone``: its torchvision ``DEFAULT`` enum, or timm's default tag."""
        if backbone == "resnet18":
            return cls("torchvision", name=PRETRAINED[name].enum)
        if backbone.startswith("timm:"):
            return cls("timm", name=_timm_default_tag(backbone[len("timm:"):]))
        import torchvision

        try:
            default = torchvision.models.get_model_weights(backbone).DEFAULT
        except (ValueError, AttributeError, KeyError):
            raise WeightsError(f"torchvision publishes no weights for {backbone}; use --weights random or a state_dict file") from None
        return cls("torchvision", name=f"{type(default).__name__}.{default.name}")

    @classmethod
    def random(cls, seed: int = 0) -> Weights:
        return cls(RANDOM, seed=int(seed))

    @classmethod
    def file(cls, path: str | os.PathLike) -> Weights:
        path = Path(path)
        return cls("file", name=path.name, path=path)

    @classmethod
    def parse(cls, spec: str, seed: int = 0, backbone: str = "resnet18") -> Weights:
        """A ``--weights`` value: a name from :data:`PRETRAINED` (of ``backbone``), ``random[:SEED]`` or a state_dict file."""
        spec = str(spec)
        if spec in PRETRAINED:
            return cls.pretrained(spec, backbone)
        if spec == RANDOM:
            return cls.random(seed)
        match = _RANDOM_SPEC.fullmatch(spec)
        if match:
            return cls.random(int(match.group(1)))
        if not Path(spec).is_file():
            raise WeightsError(
                f"--weights {spec!r} is neither {', '.join([*PRETRAINED, RANDOM])} nor an existing state_dict file"
            )
        return cls.file(spec)

    @classmethod
    def from_id(cls, weights_id: str) -> Weights:
        """The weights a provenance id names; a ``file:`` id gives weights known only by name (no path).

        Torchvision weights this tlkit has no entry for still parse (``known`` is False):
        the id is well formed, only loading them is impossible.
        """
        weights_id = str(weights_id)
        kind, _, rest = weights_id.partition(":")
        match = _RANDOM_ID.fullmatch(weights_id)
        if match:
            return cls.random(int(match.group(1)))
        if kind in ("torchvision", "timm") and rest:
            return cls(kind, name=rest)
        if kind == "file" and rest:
            return cls("file", name=rest)
        raise WeightsError(f"{weights_id!r} is not a weights id this tlkit reads")

    def at_precision(self, precision: str) -> Weights:
        """The weights ``--precision`` runs: a named entry's published int8 variant, else these weights.

        Only named weights have published variants; random and file weights at int8 are
        calibrated (tlkit.embed.precision), from these same fp32 tensors.
        """
        entry = self.entry
        if str(precision) == "int8" and entry is not None and entry.int8 is not None:
            return Weights("torchvision", name=entry.int8.enum)
        return self

    # -- what it is --------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The provenance id a cache records: ``torchvision:<enum>``, ``random:seed=<seed>`` or ``file:<name>``."""
        if self.kind == RANDOM:
            return f"{RANDOM}:seed={self.seed}"
        return f"{self.kind}:{self.name}"

    @property
    def entry(self) -> Pretrained | None:
        """The :data:`PRETRAINED` entry of torchvision weights (None for others, and for unknown ones)."""
        if self.kind != "torchvision":
            return None
        listed = next((p for entry in PRETRAINED.values() for p in entry.variants() if p.enum == self.name), None)
        return listed or _torchvision_entry(self.name)

    @property
    def known(self) -> bool:
        """Whether :meth:`load` can find the tensors (not for a file known only by name, nor unknown torchvision weights)."""
        if self.kind == "file":
            return self.path is not None
        return self.kind in (RANDOM, "timm") or self.entry is not None

    @property
    def transform(self) -> TransformSpec:
        """The evaluation transform these weights expect (random and file weights: the ImageNet eval transform)."""
        if self.kind == "timm":
            return default_transform("timm:" + self.name.split(".")[0])
        entry = self.entry
        return entry.transform if entry is not None else DEFAULT_TRANSFORM

    def transform_for(self, backbone: str = "resnet18") -> TransformSpec:
        """What ``backbone`` with these weights sees: named weights their own transform; random and file
        weights that of the backbone's published weights, so their features compare with those."""
        if self.kind in ("torchvision", "timm"):
            return self.transform
        return default_transform(backbone)

    # -- the tensors -------------------------------------------------------------------------------

    def load(self, backbone: str = "resnet18") -> LoadedWeights:
        """The state dict and its fingerprint, or a one-line :class:`WeightsError`.

        ``backbone`` is the network random weights initialise (named weights know their own).
        """
        if self.kind == RANDOM:
            state_dict = _random_state_dict(self.seed, backbone)
        elif self.kind == "timm":
            state_dict = _load_timm(self.name)
        elif self.kind == "file":
            if self.path is None:
                raise WeightsError(f"the weights file {self.name!r} is known only by its name; pass --weights PATH to it")
            state_dict = _load_state_dict_file(self.path)
        else:
            entry = self.entry
            if entry is None:
                raise WeightsError(f"the weights {self.id} are not known to this tlkit; "
                                   "pass --weights PATH to a state_dict file of them")
            state_dict, file_sha256 = _load_pretrained(entry)
            if entry.quantized:  # packed weights are objects, not tensors: the file is the fingerprint
                return LoadedWeights(weights=self, state_dict=state_dict, sha256=file_sha256)
        return LoadedWeights(weights=self, state_dict=state_dict, sha256=state_dict_sha256(state_dict))


@dataclass(frozen=True)
class LoadedWeights:
    """Weights with their tensors: what to build the backbone from, and what to record about it."""

    weights: Weights
    state_dict: dict
    sha256: str

    @property
    def id(self) -> str:
        return self.weights.id


def state_dict_sha256(state_dict: dict) -> str:
    """A fingerprint of the tensors (names, dtypes, shapes and bytes), file format aside."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(entry: Pretrained, target: Path) -> None:
    import torch

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # fail in seconds when offline, not minutes
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(entry.url, str(target), hash_prefix=entry.sha256_prefix, progress=True)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise WeightsError(
            f"cannot download {entry.enum} from {entry.url} ({getattr(exc, 'reason', exc)}); "
            f"offline? copy {entry.file_name} to {target.parent}/ (set TORCH_HOME to change that folder), "
            f"or pass --weights PATH_TO_STATE_DICT or --weights random"
        ) from None
    except RuntimeError as exc:  # torch.hub's hash mismatch
        raise WeightsError(f"download of {entry.url} failed its hash check: {exc}") from None
    finally:
        socket.setdefaulttimeout(previous)


def _load_pretrained(entry: Pretrained) -> tuple[dict, str]:
    """The entry's state dict, fetched once into torch's checkpoint folder and sha-checked, and the file's sha256."""
    target = checkpoint_dir() / entry.file_name
    if not target.exists():
        _download(entry, target)
    actual = _file_sha256(target)
    if not actual.startswith(entry.sha256_prefix):
        raise WeightsError(
            f"{target} does not match the sha256 prefix {entry.sha256_prefix} of {entry.enum} "
            f"(got {actual[:12]}); delete it to download again"
        )
    return (load_quantized_state_dict(target) if entry.quantized else _load_state_dict_file(target)), actual


def _load_state_dict_file(path: Path) -> dict:
    import torch

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise WeightsError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    return state_dict


def load_quantized_state_dict(path: Path) -> dict:
    """A quantized ResNet-18 state dict (torchvision's published int8 weights), with ``weights_only=True``."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch's own rebuild of quantized tensors uses its deprecated TypedStorage
            warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated", category=UserWarning)
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise WeightsError(f"cannot load quantized weights from {path}: {str(exc).splitlines()[0]}") from None
    if not is_quantized_state_dict(state_dict):
        raise WeightsError(f"{path} is not a quantized ResNet-18 state_dict")
    return state_dict


def is_quantized_state_dict(state_dict) -> bool:
    import torch

    return isinstance(state_dict, dict) and any(
        isinstance(v, torch.Tensor) and v.is_quantized for v in state_dict.values()
    )


def _random_state_dict(seed: int, backbone: str = "resnet18") -> dict:
    """The library's own initialisation of ``backbone`` under ``seed`` (``--weights random``)."""
    import torch

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if backbone == "resnet18":  # the call tlkit always made: the same tensors, the same sha256
            import torchvision

            return torchvision.models.resnet18(weights=None).state_dict()
        return architecture(backbone).state_dict()
    finally:
        torch.random.set_rng_state(generator_state)


# -- models by name, and the transforms of their published weights (torchvision's _api.py style) --------------

TIMM_PREFIX = "timm:"


def timm_module():
    try:
        import timm
    except ImportError:
        raise WeightsError("timm backbones need timm: pip install 'tlkit[timm]'") from None
    return timm


def architecture(name: str):
    """A freshly initialised classification model by name: torchvision's ``get_model`` or ``timm:NAME``."""
    if name.startswith(TIMM_PREFIX):
        return timm_module().create_model(name[len(TIMM_PREFIX):], pretrained=False)
    import torchvision

    return torchvision.models.get_model(name, weights=None)


@lru_cache(maxsize=8)
def default_transform(name: str) -> TransformSpec:
    """The eval transform of ``name``'s default published weights (torchvision's enum, timm's config)."""
    if name.startswith(TIMM_PREFIX):
        return timm_transform(architecture(name))
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):  # a model without published weights: the ImageNet eval transform
        return DEFAULT_TRANSFORM
    return enum_transform(weights)


def enum_transform(weights) -> TransformSpec:
    """torchvision's ``ImageClassification`` of a weights enum member, as a TransformSpec."""
    t = weights.transforms()
    return TransformSpec(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]), interpolation=t.interpolation.value,
                         mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std),
                         antialias=bool(t.antialias))


def timm_transform(model) -> TransformSpec:
    """timm's eval transform of a model (``resolve_data_config``: resize to crop / crop_pct, centre crop)."""
    import math

    config = timm_module().data.resolve_data_config({}, model=model)
    if config.get("crop_mode", "center") != "center":
        raise WeightsError(f"timm's eval transform for this model crops by {config['crop_mode']!r}; tlkit runs centre crops only")
    crop = int(config["input_size"][-1])
    return TransformSpec(resize=int(math.floor(crop / config["crop_pct"])), crop=crop,
                         interpolation=str(config["interpolation"]), mean=tuple(map(float, config["mean"])),
                         std=tuple(map(float, config["std"])), antialias=True)


def _torchvision_entry(enum: str) -> Pretrained | None:
    """Any torchvision classification weights enum member ("ResNet50_Weights.IMAGENET1K_V2"), as an entry."""
    import torchvision

    try:
        member = torchvision.models.get_weight(enum)
    except (ValueError, AttributeError, KeyError, TypeError):
        return None
    return Pretrained(name="imagenet", module=type(member).__module__, enum=enum, transform=enum_transform(member))


def _timm_default_tag(arch: str) -> str:
    cfg = timm_module().models.get_pretrained_cfg(arch)
    tag = getattr(cfg, "tag", None) if cfg is not None else None
    return f"{arch}.{tag}" if tag else arch


def _load_timm(name: str) -> dict:
    """timm's pretrained weights (fetched by timm from the Hugging Face hub into its cache)."""
    timm = timm_module()
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as exc:  # offline: huggingface_hub / urllib raise many types
        raise WeightsError(f"cannot fetch timm's pretrained weights {name} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                           "offline? pass --weights PATH_TO_STATE_DICT or --weights random") from None
