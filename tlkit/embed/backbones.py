"""Backbones as values: which network (``--backbone``) and which of its nodes (``--layer``) stage one runs.

* ``--backbone NAME``: any torchvision classification model by its ``torchvision.models`` name
  (``torchvision.models.list_models(module=torchvision.models)``), or ``timm:NAME`` for any
  model of timm (an optional extra: ``pip install 'tlkit[timm]'``). Default ``resnet18``.
* ``--layer NODE``: torchvision: any node of the model's feature-extraction graph
  (``torchvision.models.feature_extraction.get_graph_node_names``, eval mode); timm: a feature
  index of ``forward_intermediates`` (0 = the stem's output ... -1 = the last block). Default:
  the penultimate features, i.e. what the model's last ``nn.Linear`` reads (its input, minus a
  flatten or dropout in between): ``avgpool`` for ResNets and EfficientNets, the class token for a
  ViT; timm: ``pre_logits`` (``forward_head(pre_logits=True)``).

A node whose output is spatial, (N, C, H, W), is reduced by global average pooling over H x W;
a token output, (N, T, C), by the mean over its T tokens; the provenance says ``pooling: avg``.
An output that is one vector per image (``avgpool``'s (N, C, 1, 1) included) is only flattened:
``pooling: none``. So ``resnet18`` at its default layer is exactly the network tlkit always ran
(``build_backbone``: fc removed, BatchNorm folded), and its caches stay valid.

::

    b = Backbone.parse("resnet50", "layer3")
    b.features()        # Features(layer='layer3', pooling='avg', dim=1024): by a forward on the meta device
    b.network(state_dict)   # the fp32 module the mapper runs: images -> (N, 1024)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from tlkit.embed.backbone import load_body
from tlkit.errors import TlkitError
from tlkit.weights import TIMM_PREFIX, architecture, default_transform, timm_module

DEFAULT_BACKBONE = "resnet18"
TIMM_DEFAULT_LAYER = "pre_logits"
PROBE_SIZE = 224  # the input a shape probe runs (every layer's channels; the spatial sizes at 224 px)


class BackboneError(TlkitError):
    """An unknown backbone or layer, or one that cannot be used; one line with the closest valid names."""


def close_names(name: str, valid, n: int = 5) -> str:
    found = difflib.get_close_matches(str(name), list(valid), n=n, cutoff=0.5)
    return f"closest: {', '.join(found)}" if found else f"e.g. {', '.join(list(valid)[:n])}"


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


@dataclass(frozen=True)
class Features:
    """What a backbone at a layer gives: the node recorded in the provenance, the pooling, the width."""

    layer: str
    pooling: str  # "none" | "avg"
    dim: int


@dataclass(frozen=True)
class Backbone:
    """A network and one of its nodes; frozen, so it can be compared, stored and sent to Ray actors."""

    name: str = DEFAULT_BACKBONE
    layer: str = ""  # "" : the penultimate features (the default)

    @classmethod
    def parse(cls, name: str | None = None, layer: str | None = None) -> Backbone:
        """Check the names (one line with the closest valid ones otherwise); the layer is checked by :meth:`features`."""
        name = str(name or DEFAULT_BACKBONE)
        if name.startswith(TIMM_PREFIX):
            timm = timm_module()
            arch = name[len(TIMM_PREFIX):]
            if not timm.is_model(arch):
                raise BackboneError(f"--backbone {name!r} is not a timm model; {close_names(arch, timm.list_models())}")
        elif name not in torchvision_names():
            raise BackboneError(
                f"--backbone {name!r} is not a torchvision classification model (tlkit embed --list-backbones); "
                f"{close_names(name, torchvision_names())}"
            )
        return cls(name, str(layer or ""))

    @property
    def is_timm(self) -> bool:
        return self.name.startswith(TIMM_PREFIX)

    @property
    def arch(self) -> str:
        return self.name[len(TIMM_PREFIX):] if self.is_timm else self.name

    @property
    def is_legacy(self) -> bool:
        """resnet18 at its default layer: the network tlkit ran before backbones were a choice (kept bit for bit)."""
        return self.name == DEFAULT_BACKBONE and self.features().layer == "avgpool"

    # -- the network ----------------------------------------------------------------------------

    def model(self, state_dict: dict | None = None) -> nn.Module:
        """The whole classification model in eval mode, frozen; ``state_dict`` loaded (None: as initialised)."""
        model = architecture(self.name)
        if state_dict is not None:
            load_body(model, state_dict, self.name)
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        return model

    def body(self, model: nn.Module) -> nn.Module:
        """``model`` cut at the chosen node: images -> that node's raw output (before tlkit's pooling)."""
        layer = self.features().layer
        if self.is_timm:
            return _TimmBody(model, None if layer == TIMM_DEFAULT_LAYER else int(layer))
        from torchvision.models.feature_extraction import create_feature_extractor

        return _Out(create_feature_extractor(model, return_nodes={layer: "out"}))

    def network(self, state_dict: dict) -> nn.Module:
        """The fp32 feature extractor the mapper runs: images -> (N, dim) float32.

        resnet18 at its default layer is :func:`tlkit.embed.backbone.build_backbone` with
        BatchNorm folded, exactly as before. Other torchvision graphs get BatchNorm folded by
        ``torch.fx.experimental.optimization.fuse`` where it traces (same function up to float
        rounding); timm models run as they are.
        """
        if self.is_legacy:
            from tlkit.embed.backbone import build_backbone, fuse_batchnorm

            return fuse_batchnorm(build_backbone(state_dict))
        body = self.body(self.model(state_dict))
        if not self.is_timm:
            body = _fused(body)
        return Pooled(body, self.features().pooling)

    def random_state_dict(self, seed: int) -> dict:
        """The library's own initialisation of this model under ``seed`` (``--weights random``)."""
        from tlkit.weights import Weights

        return Weights.random(seed).load(backbone=self.name).state_dict

    # -- what it gives --------------------------------------------------------------------------

    def features(self) -> Features:
        """The node, pooling and width; an unknown layer is one line with the closest valid names."""
        return _features(self.name, self.layer)

    def layers(self) -> list[tuple[str, str]]:
        """Every node (torchvision) or feature index (timm) with its output shape at 224 px: ``--list-layers``."""
        return _layers(self.name)

    def transform(self):
        """The eval transform of this model's default weights (torchvision's enum, timm's pretrained config)."""
        return default_transform(self.name)


class _Out(nn.Module):
    """create_feature_extractor returns a dict; the mapper wants the tensor."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, images):
        return self.extractor(images)["out"]


class _TimmBody(nn.Module):
    """A timm model's pre-logits features (index None) or the output of one of its feature levels."""

    def __init__(self, model: nn.Module, index: int | None):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, images):
        if self.index is None:
            return self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return self.model.forward_intermediates(images, indices=[self.index], intermediates_only=True)[0]


class Pooled(nn.Module):
    """A body's output as one float vector per image: averaged over space or tokens (``avg``), or flattened."""

    def __init__(self, body: nn.Module, pooling: str):
        super().__init__()
        self.body, self.pooling = body, pooling

    def forward(self, images):
        return pool(self.body(images), self.pooling)


def pool(out: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "avg":
        out = out.mean(dim=(2, 3)) if out.ndim == 4 else out.mean(dim=1)
    return out.flatten(1)


def pooling_of(shape) -> str:
    """``avg`` for a spatial (N, C, H, W) output with H x W > 1 or a token (N, T, C) output; else ``none``."""
    if len(shape) == 4 and shape[2] * shape[3] > 1:
        return "avg"
    return "avg" if len(shape) == 3 else "none"


def _fused(module: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse

    # Only where there is a BatchNorm to fold: fx's re-trace gains a graph without one nothing and costs it
    # (ViT-B/16 ran 1.6x slower per batch re-traced, measured on the AVX2 CPU).
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    try:
        return fuse(module.eval())
    except Exception:  # a graph fx cannot re-trace: unfused is the same function, only slower
        return module


def _probe_input(device="meta") -> torch.Tensor:
    return torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=device)


def _on_meta(build):
    """Build and run a shape probe on the meta device (no memory, no arithmetic); on the CPU if an op refuses."""
    try:
        with torch.device("meta"):
            module = build()
        with torch.no_grad():
            return module, module(_probe_input("meta"))
    except Exception:
        module = build()
        with torch.no_grad():
            return module, module(_probe_input("cpu"))


@lru_cache(maxsize=32)
def _features(name: str, layer: str) -> Features:
    backbone = Backbone(name, layer)
    if backbone.is_timm:
        return _timm_features(backbone)
    if name == DEFAULT_BACKBONE and layer in ("", "avgpool"):
        return Features("avgpool", "none", 512)  # known without tracing: the CLI stays fast for the default
    nodes = _eval_nodes(name)
    if not layer:
        layer = _penultimate(name)
    elif layer not in nodes and layer not in _modules_of(nodes):
        raise BackboneError(f"--layer {layer!r} is not a node of {name} (tlkit embed --list-layers --backbone {name}); "
                            f"{close_names(layer, sorted(_modules_of(nodes)) + nodes)}")
    _, out = _on_meta(lambda: _cut(name, layer))
    if not isinstance(out, torch.Tensor):
        raise BackboneError(f"--layer {layer!r} of {name} outputs a {type(out).__name__}, not a tensor; choose another node")
    shape = tuple(out.shape)
    pooling = pooling_of(shape)
    return Features(layer, pooling, _dim(shape, pooling))


def _dim(shape, pooling: str) -> int:
    if pooling == "avg":
        return int(shape[1] if len(shape) == 4 else shape[-1])
    return int(torch.Size(shape[1:]).numel())


def _cut(name: str, layer: str) -> nn.Module:
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    return _Out(create_feature_extractor(torchvision.models.get_model(name, weights=None).eval(), return_nodes={layer: "out"}))


@lru_cache(maxsize=8)
def _traced(name: str):
    """(graph, node -> qualified name) of the model in eval mode, as torchvision's feature extraction names them."""
    import torchvision
    from torchvision.models.feature_extraction import NodePathTracer

    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None).eval()
    tracer = NodePathTracer()
    graph = tracer.trace(model)
    return model, graph, dict(tracer.node_to_qualname)


def _eval_nodes(name: str) -> list[str]:
    _, _, names = _traced(name)
    return list(dict.fromkeys(names.values()))


def _modules_of(nodes) -> set[str]:
    """Module names (``layer3``), which create_feature_extractor resolves to the module's last node."""
    return {".".join(n.split(".")[:i]) for n in nodes for i in range(1, n.count(".") + 1)}


_PASS_THROUGH = (nn.Dropout, nn.Flatten, nn.Identity)


def _penultimate(name: str) -> str:
    """The node the model's last nn.Linear reads, walking back over dropout and flatten (same values)."""
    model, graph, names = _traced(name)
    modules = dict(model.named_modules())
    linear = [n for n in graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), nn.Linear)]
    if not linear:
        raise BackboneError(f"{name} has no linear classifier to take the penultimate features from; "
                            f"choose --layer (tlkit embed --list-layers --backbone {name})")
    node = linear[-1].args[0]
    while (node.op == "call_module" and isinstance(modules.get(node.target), _PASS_THROUGH)) or \
            (node.op == "call_function" and node.target is torch.flatten) or \
            (node.op == "call_method" and node.target == "flatten"):
        node = node.args[0]
    return names[node]


def _timm_index(backbone: Backbone) -> int | None:
    if backbone.layer in ("", TIMM_DEFAULT_LAYER):
        return None
    try:
        return int(backbone.layer)
    except ValueError:
        raise BackboneError(f"--layer for a timm backbone is a feature index (0, 1, ..., -1) or {TIMM_DEFAULT_LAYER}, "
                            f"not {backbone.layer!r} (tlkit embed --list-layers --backbone {backbone.name})") from None


def _timm_features(backbone: Backbone) -> Features:
    index = _timm_index(backbone)
    model, outs = _on_meta(lambda: _TimmAll(backbone.model()))
    if index is None:
        return Features(TIMM_DEFAULT_LAYER, "none", int(outs[0].shape[1]))
    levels = outs[1:]
    if not -len(levels) <= index < len(levels):
        raise BackboneError(f"--layer {index} is not a feature index of {backbone.name}: it has {len(levels)} "
                            f"(0 ... {len(levels) - 1}, or -1 for the last)")
    index %= len(levels)
    shape = tuple(levels[index].shape)
    return Features(str(index), pooling_of(shape), _dim(shape, pooling_of(shape)))


class _TimmAll(nn.Module):
    """A shape probe: the pre-logits features, then every feature level of ``forward_intermediates``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        pre = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return [pre, *self.model.forward_intermediates(images, intermediates_only=True)]


@lru_cache(maxsize=8)
def _layers(name: str) -> list[tuple[str, str]]:
    backbone = Backbone(name)
    if backbone.is_timm:
        _, outs = _on_meta(lambda: _TimmAll(backbone.model()))
        return [(TIMM_DEFAULT_LAYER, _shape(outs[0]))] + [(str(i), _shape(o)) for i, o in enumerate(outs[1:])]
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    nodes = _eval_nodes(name)
    _, outs = _on_meta(lambda: create_feature_extractor(torchvision.models.get_model(name, weights=None).eval(),
                                                        return_nodes={n: n for n in nodes if n != "x"}))
    return [(n, _shape(outs.get(n))) for n in nodes if n != "x"]


def _shape(value) -> str:
    if isinstance(value, torch.Tensor):
        return "(N, " + ", ".join(str(d) for d in value.shape[1:]) + ")"
    return type(value).__name__


def list_backbones() -> list[str]:
    """Every ``--backbone`` value: torchvision's classification models, then timm's (when installed)."""
    names = torchvision_names()
    try:
        import timm
    except ImportError:
        return names
    return names + [TIMM_PREFIX + n for n in timm.list_models()]
