"""Numeric precision of stage one: ``fp32 | bf16 | fp16 | int8``.

A :class:`Precision` turns a ResNet-18 state dict into the network the mapper
runs, and says what a cache must record about it. Features always leave the
network as float32, whatever the precision inside.

* **fp32** -- exactly today's network (BatchNorm folded, channels_last), so
  fp32 caches stay bit-identical to those written before precisions existed.
* **bf16** -- the fp32 network under ``torch.autocast`` (CPU and CUDA):
  convolutions and matmuls in bfloat16, accumulation in float32.
* **fp16** -- autocast to float16, CUDA only: CPUs have no fast fp16
  convolutions, and bf16 is the CPU's half precision.
* **int8** -- post-training static quantization, FX graph mode, x86 backend,
  ``get_default_qconfig_mapping("x86")``: weights per output channel,
  symmetric (a min/max observer: exact, nothing to calibrate); activations per
  tensor from a histogram observer with ``reduce_range`` (7 bits), which keeps
  the int16 intermediates of fbgemm's AVX2 kernels from saturating, so a
  machine without VNNI computes the same integers as one with it. That
  portability costs some quality, measured on 96 hymenoptera photos with a
  briefly trained ResNet-18: mean cosine to fp32 0.9979 with 7-bit activations,
  0.9993 with 8 (reduce_range off); both clear the 0.99 target, only 7 bits give the
  same integers on every x86 CPU. (torch.ao.quantization announces its move to
  torchao's pt2e flow, which needs torch.compile; FX is what this torch ships.)
  The global average pool runs in float32 on the dequantized layer4 output
  (:class:`_FloatPool` says why). For ``--weights imagenet`` torchvision's published
  quantized ResNet-18 (``ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1``) is used as it is.

Why int8 calibration is stored, not re-derived
----------------------------------------------
The activation ranges come from running the fp32 network over a sample of
images. A cache must be extended by later runs (resume, new images, Ray shards
on other machines, ``verify --data``) with *the same* quantized network, or its
rows would come from slightly different feature spaces. Re-deriving the ranges
on every run would need (a) the same sample, which new images or a moved data
folder change, and (b) bit-identical fp32 sums, which another CPU (AVX-512
against AVX2, another oneDNN kernel) does not give: histogram bin edges move,
so scales move. The alternative, calibrating on synthetic inputs drawn from a
recorded seed, fixes (a) but not (b), and fits photos worse at the worst end.
Measured by bench/bench_precision.py (``int8-synthetic`` rows) on all 398
hymenoptera photos with a briefly trained ResNet-18: seeded noise gives a min
cosine to fp32 of 0.979 against 0.996 for photos, and a max abs difference of
6.0 against 0.57 (a few photos get clipped hard), though its mean cosine is a
little higher (0.9990 against 0.9980) and the linear probe loses the same 1.3
points with either; with random weights the two are alike. Photos protect the
worst case, so photos it is.

So the first run into a cache calibrates once, on a deterministic sample of
the real images (:func:`calibration_sample`: the first
:data:`CALIBRATION_IMAGES` paths of the training split in the order of their
sha256, recorded by name), and the result is a small :class:`Int8Calibration`:
one (scale, zero point) per activation observer, 29 of them for ResNet-18. It is
stored with the cache's provenance (:meth:`Int8Calibration.to_json`, a few KiB
of text, fit for an HDF5 attribute and the parts manifest alike) and every
later run rebuilds the network from it with :func:`build_int8`. The first run
itself goes through the same rebuild, so there is one path only. Everything
else in the quantized network is a deterministic function of the fp32
weights: BatchNorm folding and per-channel min/max are element-wise, and the
weights are rounded with ``torch.quantize_per_channel``. Two builds from the
same state dict and calibration are therefore identical tensor for tensor
(tests/test_precision.py checks it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlkit.embed.backbone import FEATURE_DIM, build_backbone
from tlkit.embed.backbones import Backbone, Pooled
from tlkit.errors import TlkitError, WeightsError
from tlkit.weights import is_quantized_state_dict

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
CALIBRATION_IMAGES = 32  # one batch; 128 photos gave no closer features (mean cosine 0.9975 vs 0.9979, bench weights)
QUANT_ENGINE = "x86"  # PyTorch's x86 quantization backend: fbgemm or oneDNN kernels, whichever is faster per op


class PrecisionError(TlkitError):
    """A precision that cannot run here, or an int8 network that cannot be rebuilt."""


# -- the value type ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """One of :data:`PRECISIONS`; builds the inference network and names what a cache records."""

    name: str = "fp32"

    def __post_init__(self):
        if self.name not in PRECISIONS:
            raise PrecisionError(f"--precision {self.name!r} is not one of {', '.join(PRECISIONS)}")

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        return value if isinstance(value, Precision) else cls(str(value))

    def __str__(self) -> str:
        return self.name

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def check_device(self, device: torch.device) -> None:
        """Raise :class:`PrecisionError` (one line) when this precision cannot run on ``device``."""
        if self.name == "fp16" and device.type != "cuda":
            raise PrecisionError(
                f"--precision fp16 needs a CUDA GPU (this run is on {device.type}); on a CPU use bf16"
            )
        if self.name == "int8":
            if device.type != "cpu":
                raise PrecisionError(
                    f"--precision int8 runs on the CPU only (PyTorch's quantized kernels are CPU kernels); "
                    f"use --device cpu, or bf16/fp16 on {device.type}"
                )
            if QUANT_ENGINE not in torch.backends.quantized.supported_engines:
                raise PrecisionError(
                    f"--precision int8 needs PyTorch's {QUANT_ENGINE} quantization backend, which this torch lacks "
                    f"(it has {', '.join(torch.backends.quantized.supported_engines) or 'none'}); use bf16"
                )

    def build(self, state_dict: dict, device: torch.device, calibration: "Int8Calibration | None" = None,
              backbone: Backbone | None = None) -> nn.Module:
        """The network the mapper runs at this precision (call it under :meth:`autocast`).

        ``backbone``: the network and layer (tlkit.embed.backbones); default resnet18's penultimate features.
        """
        self.check_device(device)
        backbone = backbone or Backbone()
        if self.name != "int8":
            # channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their fastest convolutions; folding
            # BatchNorm into the convolutions saves a pass over every activation. Autocast casts the
            # fp32 weights per call, so bf16/fp16 share this network with fp32.
            return backbone.network(state_dict).to(device=device, memory_format=torch.channels_last)
        if is_quantized_state_dict(state_dict):
            if not backbone.is_legacy:
                raise PrecisionError(f"published quantized weights exist here for resnet18's default layer only, not {backbone.name} "
                                     f"{backbone.features().layer}; use --weights random or a state_dict file at int8")
            return build_published_int8(state_dict)
        if calibration is None:
            raise PrecisionError("--precision int8 with these weights needs a calibration (calibrate_int8) and none was given")
        return build_int8(state_dict, calibration, backbone)

    def autocast(self, device: torch.device):
        """The context the forward pass runs in: autocast for bf16/fp16, nothing otherwise."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    @property
    def verify_tolerance(self) -> float:
        """Max abs difference ``verify --data`` allows between stored and re-embedded features."""
        return VERIFY_TOLERANCE[self.name]

    def provenance_attrs(self, calibration: "Int8Calibration | None" = None) -> dict[str, str]:
        """What the cache's provenance records about the precision (all part of the feature space)."""
        attrs = {"precision": self.name}
        if self.name == "int8" and calibration is not None:
            attrs["int8_calibration"] = calibration.to_json()
            attrs["int8_calibration_sha256"] = calibration.sha256
        return attrs


# ``verify --data`` re-embeds a sample and compares max abs differences. What separates a good
# cache from a bad one, measured on hymenoptera (features of magnitude up to ~10; bench_precision):
#   * the same precision again on this machine: 0 exactly, at every precision, whatever the batch
#     size (32 or 7), the thread count (1 or 2) or the memory format: the kernels are deterministic;
#   * fp32 against bf16: 0.05-0.14; fp32 against int8: 0.24-0.57 (the gap between feature spaces);
#   * the same photo re-encoded as JPEG at quality 90, fp32: 0.03-0.08 (an edited image).
# So the tolerances sit well under both the gap and an edit, and allow only what another CPU may do:
#   fp32: 1e-4, tlkit verify's own (float32 sums in another order move features by ~1e-6).
#   bf16, fp16: 1e-2. A CPU without AVX-512 BF16 runs bf16 convolutions in emulation, another GPU
#         picks other kernels: a float32 accumulator that differs in its last bits can round to
#         the neighbouring bfloat16 (a step of 2^-8 relative) and the flip travels on; that costs a
#         fraction of the fp32-vs-bf16 gap, not more than an edit.
#   int8: 1e-4: the integers must agree. The arithmetic is exact integer arithmetic up to layer4, whose
#         outputs are whole multiples of its scale (0.04-0.12 here); the float pool averages 49 of them, so a
#         real difference is at least 1/49 of such a step (0.0008 or more). reduce_range removes the one
#         documented cause of different integers on different x86 CPUs (int16 saturation in fbgemm's
#         AVX2 kernels).
VERIFY_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2, "fp16": 1e-2, "int8": 1e-4}


def compare_features(reference, other) -> dict[str, float]:
    """How far ``other`` (rows of features) is from ``reference``: per-row cosine (min, mean) and max abs diff."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.einsum("ij,ij->i", a, b) / np.where(norms > 0, norms, 1.0)
    return {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
            "max_abs_diff": float(np.abs(a - b).max())}


# -- bf16 / int8 speed: what the CPU offers ------------------------------------------------------------------


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's first CPU (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, arm64
            return frozenset(value.split())
    return frozenset()


FAST_ON_CPU = {  # flags of which at least one makes the precision fast on a CPU
    "bf16": ("avx512_bf16", "amx_bf16", "bf16"),  # x86 AVX-512 BF16 or AMX; arm64 BF16
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),  # x86 VNNI (AVX-512 or AVX) or AMX
}


# Time per image relative to fp32 on a CPU without those instructions, measured with `tlkit embed`
# (ResNet-18, random weights, whole process) on an AVX2-only 2-core AMD EPYC (Zen 3; no AVX-512,
# bf16 or VNNI), torch 2.14.1 (docs/performance.md#avx2-only-cpus): bf16 ran 4.8 images/s against
# fp32's 23.8 on 398 photos (emulated bfloat16: about 5x the time); int8 on AVX2 kernels 52.4
# against 37.6 on 3,980 (0.72x the time: still the fastest choice there). On a CPU with AVX-512
# BF16 and VNNI (38.6, 62.4 and 94.8 images/s at 3,980 photos): bf16 0.62x, int8 0.41x fp32's time.
COST_WITHOUT = {"bf16": 5.0, "int8": 0.72}
COST_WITH = {"bf16": 0.62, "int8": 0.41}
REFUSE_SLOWER_THAN = 2.0  # a choice measured this many times fp32's time runs only with --allow-slow


def speed_warning(precision: "str | Precision", device: torch.device, flags: Iterable[str] | None = None) -> str | None:
    """One line when ``device`` lacks what makes ``precision`` fast: the expected cost and the faster choice.

    None when nothing is missing, and when it cannot tell (no /proc/cpuinfo).
    """
    name = Precision.parse(precision).name
    device = torch.device(device)
    if device.type == "cuda":
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            return f"note: {torch.cuda.get_device_name(device)} has no fast bf16 (needs compute capability 8.0+); fp16 is faster there"
        return None
    if name not in FAST_ON_CPU:
        return None
    flags = cpu_flags() if flags is None else frozenset(flags)
    if not flags or flags & set(FAST_ON_CPU[name]):
        return None
    wanted = " or ".join(FAST_ON_CPU[name][:2])
    cost, fast = COST_WITHOUT[name], COST_WITH[name]
    if cost >= 1:
        return (f"this CPU lacks {wanted}, the instructions that make --precision {name} fast: it is emulated, "
                f"measured about {cost:.0f}x fp32's time per image on an AVX2-only CPU ({fast:.2f}x with them); "
                f"--precision int8 (fastest here) or fp32 is faster")
    return (f"note: this CPU lacks {wanted}: --precision {name} runs on slower kernels, measured {cost:.2f}x fp32's "
            f"time per image on an AVX2-only CPU ({fast:.2f}x with them); still the fastest choice here")


def check_speed(precision: "str | Precision", device: torch.device, allow_slow: bool = False,
                flags: Iterable[str] | None = None) -> str | None:
    """Before any work: the note to print, or a one-line :class:`PrecisionError` for a choice measured
    :data:`REFUSE_SLOWER_THAN` times slower than fp32 on this CPU, unless ``allow_slow`` (``--allow-slow``)."""
    line = speed_warning(precision, device, flags)
    name = Precision.parse(precision).name
    if line is None or torch.device(device).type == "cuda" or COST_WITHOUT.get(name, 0) < REFUSE_SLOWER_THAN:
        return line
    if not allow_slow:
        raise PrecisionError(line + "; pass --allow-slow to run it anyway")
    return "note: " + line + " (--allow-slow)"


# -- int8: calibration, stored, and the network rebuilt from it -----------------------------------------------


@dataclass(frozen=True)
class Int8Calibration:
    """The activation quantization of an FX-quantized ResNet-18: one entry per observer, in graph order.

    ``sample`` says what it was measured on (recorded, never re-read: the numbers are the truth).
    """

    sample: str
    observers: tuple[str, ...]
    scales: tuple[float, ...]  # float32 values, exact in JSON (float64 holds every float32)
    zero_points: tuple[int, ...]
    quant_min: int
    quant_max: int
    engine: str = QUANT_ENGINE
    pool: str = "float"  # the average pool's arithmetic (see _FloatPool); stored calibrations without it: "int8"

    def to_json(self) -> str:
        fields = {"sample": self.sample, "observers": list(self.observers), "scales": list(self.scales),
                  "zero_points": list(self.zero_points), "quant_min": self.quant_min, "quant_max": self.quant_max,
                  "engine": self.engine}
        if self.pool != "int8":  # a calibration from before the float pool keeps its text, hence its sha256
            fields["pool"] = self.pool
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Int8Calibration":
        try:
            raw = json.loads(text)
            return cls(
                sample=str(raw["sample"]), observers=tuple(map(str, raw["observers"])),
                scales=tuple(map(float, raw["scales"])), zero_points=tuple(map(int, raw["zero_points"])),
                quant_min=int(raw["quant_min"]), quant_max=int(raw["quant_max"]), engine=str(raw["engine"]),
                pool=str(raw.get("pool", "int8")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise PrecisionError(f"the stored int8 calibration is unreadable ({exc})") from None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


@contextlib.contextmanager
def _quant_engine(engine: str = QUANT_ENGINE):
    """Pack weights for ``engine`` (the global setting is restored after), without torch.ao's notices.

    torch.ao.quantization announces its move to torchao (pt2e, which needs torch.compile) and the
    deprecation of reduce_range and of quantized tensors: once per build, and once per observer
    call during calibration. The API works in this torch and is what tlkit pins; the notices say
    nothing a user of ``tlkit embed`` can act on.
    """
    previous = torch.backends.quantized.engine
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Please use quant_min and quant_max", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel", category=UserWarning)
        torch.backends.quantized.engine = engine
        try:
            yield
        finally:
            torch.backends.quantized.engine = previous


class _FloatPool(nn.Module):
    """The quantized network up to layer4, then the global average pool in float32.

    Why: quantized average pooling keeps its input's scale, so every feature came out as a whole
    multiple of the last activation's scale (128 levels at 7 bits, steps of 0.04-0.12 here) and
    small differences between photos vanished in the rounding. Averaging the 7 x 7 dequantized
    values instead gives 49 times finer features for ~0.1% of the network's time. Measured on
    all 398 hymenoptera photos (bench/bench_precision.py): see docs/precision.md.
    """

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body  # conv1 ... layer4, flattened to (N, 512 * 7 * 7), dequantized

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.body(images)
        return x.view(x.shape[0], FEATURE_DIM, -1).mean(dim=2)


POOLS = ("float", "int8")  # "int8": the quantized pool of caches written before the float pool


def _prepare(state_dict: dict, pool: str, backbone: Backbone | None = None):
    """ResNet-18 with observers inserted (FX graph mode; Conv+BN+ReLU fused by prepare_fx).

    ``pool="float"`` leaves the average pool out of the traced network (:class:`_FloatPool` adds it back).
    Another backbone or layer: the network up to the chosen node (the float pool of
    :class:`~tlkit.embed.backbones.Pooled` follows it); a graph FX cannot quantize is one line.
    """
    if backbone is not None and not backbone.is_legacy:
        return _prepare_other(state_dict, backbone)
    import torch.fx
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    if pool not in POOLS:
        raise PrecisionError(f"the stored int8 calibration names an unknown pool {pool!r} (made by a newer tlkit?)")
    model = build_backbone(state_dict)  # unfused: prepare_fx folds BatchNorm and fuses the ReLUs itself
    if pool == "float":
        model.avgpool = nn.Identity()  # the traced graph ends in flatten: (N, 512 * 7 * 7)
    # Stack traces of every traced node cost 0.4-0.9 s per trace (linecache reads) and serve only debugging.
    emit, torch.fx.config.do_not_emit_stack_traces = torch.fx.config.do_not_emit_stack_traces, True
    try:
        with _quant_engine(), torch.no_grad():
            return prepare_fx(model, get_default_qconfig_mapping(QUANT_ENGINE), (torch.zeros(1, 3, 224, 224),))
    finally:
        torch.fx.config.do_not_emit_stack_traces = emit


def _activation_observers(prepared) -> list[tuple[str, nn.Module, list[str]]]:
    """(name, observer, every name it has) per distinct activation observer, in graph order.

    prepare_fx shares one observer between an op that keeps its input's quantization (maxpool,
    flatten) and that input, under several attribute names: they must stay one.
    """
    from torch.ao.quantization.observer import ObserverBase

    found: dict[int, tuple[str, nn.Module, list[str]]] = {}
    for name, mod in prepared.named_modules(remove_duplicate=False):
        if "." not in name and isinstance(mod, ObserverBase):
            found.setdefault(id(mod), (name, mod, []))[2].append(name)
    return list(found.values())


def _prepare_other(state_dict: dict, backbone: Backbone):
    import torch.fx
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    body = backbone.body(backbone.model(state_dict))
    emit, torch.fx.config.do_not_emit_stack_traces = torch.fx.config.do_not_emit_stack_traces, True
    try:
        with _quant_engine(), torch.no_grad():
            return prepare_fx(body, get_default_qconfig_mapping(QUANT_ENGINE), (torch.zeros(1, 3, 224, 224),))
    except Exception as exc:  # FX cannot trace every model (timm's control flow, some attention blocks)
        raise PrecisionError(f"--precision int8 cannot quantize {backbone.name} at layer {backbone.features().layer} "
                             f"({_first_line(exc)}); use fp32 or bf16") from None
    finally:
        torch.fx.config.do_not_emit_stack_traces = emit


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def calibrate_int8(state_dict: dict, batches: Iterable[torch.Tensor], sample: str,
                   backbone: Backbone | None = None) -> Int8Calibration:
    """Run the fp32 network over ``batches`` (transformed images) and keep the activation qparams.

    ``sample`` describes the images (e.g. :func:`calibration_sample`'s names) for the record.
    """
    prepared = _prepare(state_dict, "float", backbone)
    seen = 0
    with _quant_engine(), torch.no_grad():  # not inference_mode: the observers update their buffers in place
        for images in batches:
            prepared(images.contiguous(memory_format=torch.channels_last))
            seen += len(images)
    if not seen:
        raise PrecisionError("int8 calibration got no images (every sampled image failed to decode?)")
    names, scales, zero_points, ranges = [], [], [], set()
    for name, observer, _ in _activation_observers(prepared):
        scale, zero_point = observer.calculate_qparams()
        names.append(name)
        scales.append(float(scale.reshape(-1)[0]))
        zero_points.append(int(zero_point.reshape(-1)[0]))
        ranges.add((int(observer.quant_min), int(observer.quant_max)))
    (quant_min, quant_max), = ranges  # the x86 mapping gives every activation the same range
    return Int8Calibration(f"{seen} images: {sample}", tuple(names), tuple(scales), tuple(zero_points), quant_min, quant_max)


def build_int8(state_dict: dict, calibration: Int8Calibration, backbone: Backbone | None = None) -> nn.Module:
    """The quantized network, rebuilt from the fp32 weights and a stored calibration (see module docs)."""
    from torch.ao.quantization.observer import FixedQParamsObserver
    from torch.ao.quantization.quantize_fx import convert_fx

    if calibration.engine != QUANT_ENGINE:
        raise PrecisionError(f"the int8 calibration is for the {calibration.engine} backend, this tlkit uses {QUANT_ENGINE}")
    prepared = _prepare(state_dict, calibration.pool, backbone)
    observers = _activation_observers(prepared)
    if tuple(name for name, _, _ in observers) != calibration.observers:
        raise PrecisionError(
            f"the stored int8 calibration does not fit this network ({len(calibration.observers)} observers recorded, "
            f"{len(observers)} here): made by another torch version?"
        )
    for (_, observer, aliases), scale, zero_point in zip(observers, calibration.scales, calibration.zero_points):
        # An observer that reports the stored numbers: convert_fx takes every activation's
        # scale and zero point from calculate_qparams(), so nothing measured here leaks in.
        fixed = FixedQParamsObserver(
            scale, zero_point, dtype=observer.dtype, qscheme=observer.qscheme,
            quant_min=calibration.quant_min, quant_max=calibration.quant_max,
        )
        for alias in aliases:
            setattr(prepared, alias, fixed)
    with _quant_engine(), torch.no_grad():
        converted = convert_fx(prepared)
    if backbone is not None and not backbone.is_legacy:
        network = Pooled(converted, backbone.features().pooling)  # the pool (if any) in float32, as _FloatPool
        try:
            with _quant_engine(), torch.no_grad():
                network(torch.zeros(1, 3, 224, 224))  # an op without a quantized kernel fails here, not mid-embed
        except Exception as exc:
            raise PrecisionError(f"--precision int8 cannot run {backbone.name} at layer {backbone.features().layer} "
                                 f"({_first_line(exc)}); use fp32 or bf16") from None
        return network
    return _FloatPool(converted) if calibration.pool == "float" else converted


def calibration_sample(paths_by_split: dict[str, list[str]], n: int = CALIBRATION_IMAGES) -> list[str]:
    """A deterministic sample of image paths (relative to the data root) to calibrate int8 on.

    The training split when there is one -- the images a probe is evaluated on do not shape the
    feature extractor, not even label-free -- else every split; the first ``n`` in the order of
    the sha256 of their path: a spread over classes that depends on the names only.
    """
    pool = paths_by_split.get("train") or [p for paths in paths_by_split.values() for p in paths]
    return sorted(pool, key=lambda p: hashlib.sha256(p.encode()).hexdigest())[:n]


def calibrate_on_images(state_dict: dict, data_root: Path, items: Iterable, spec, max_pixels: int | None,
                        backbone: Backbone | None = None) -> Int8Calibration:
    """Calibrate on :func:`calibration_sample` of ``items`` (objects with ``.path`` and ``.split``).

    Decoded here, in this process, with the cache's transform: 32 images, once per cache.
    """
    from tlkit.errors import BadImage

    by_split: dict[str, list[str]] = {}
    for item in items:
        by_split.setdefault(item.split, []).append(item.path)
    names = calibration_sample(by_split)
    transform, images, used = spec.build(), [], []
    source = data_root if callable(data_root) else lambda name: Path(data_root) / name  # DataIndex.source: tar shards
    for name in names:
        try:
            images.append(transform(spec.load(source(name), max_pixels)))
            used.append(name)
        except BadImage:  # skipped as the embedding skips it; the record lists the images used
            continue
    batches = [torch.stack(images)] if images else []
    return calibrate_int8(state_dict, batches, json.dumps(used), backbone)


def device_for(precision: "str | Precision", device: str) -> str:
    """``--device auto`` for int8 means the CPU (its kernels are CPU kernels); otherwise ``device`` as given."""
    return "cpu" if Precision.parse(precision).name == "int8" and device == "auto" else device


# -- int8 with torchvision's published quantized ImageNet weights ---------------------------------------------
# They are an entry of the one weights registry (tlkit.weights.PRETRAINED["imagenet"].int8, chosen by
# Weights.at_precision("int8")), fetched and sha-checked like every named weights; here they are built.


def build_published_int8(state_dict: dict) -> nn.Module:
    """torchvision's quantizable ResNet-18 with a published quantized state dict, fc removed."""
    from torchvision.models.quantization import resnet18 as quantizable_resnet18

    with _quant_engine(), torch.no_grad():
        # quantize=True builds the quantized structure (torchvision calibrates it on one random
        # image and sets the engine to fbgemm); load_state_dict then replaces every number.
        model = quantizable_resnet18(weights=None, quantize=True)
        try:
            model.load_state_dict(state_dict)
        except (RuntimeError, KeyError) as exc:  # quantized modules raise KeyError for a missing tensor
            raise WeightsError(f"the quantized weights do not fit torchvision's quantized ResNet-18: {str(exc).splitlines()[0]}") from None
    model.fc = nn.Identity()  # QuantStub -> ... -> avgpool -> flatten -> (fc) -> DeQuantStub: 512 floats out
    return model.eval()
