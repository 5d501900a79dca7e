"""The baseline network: torchvision's ResNet-18 with a fresh fc layer for the data's classes."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from tlkit.errors import WeightsError

ARCHITECTURE = "resnet18"


def build_resnet18(n_classes: int, seed: int, init_state_dict: dict | None = None) -> nn.Module:
    """Random initialisation under ``seed``; with ``init_state_dict``, every layer but fc starts from it.

    The fc layer is always new (the data's classes are not ImageNet's), so
    fine-tuning trains the whole network from the embed weights plus a fresh head.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = torchvision.models.resnet18(weights=None, num_classes=n_classes)
    finally:
        torch.random.set_rng_state(generator_state)
    if init_state_dict is not None:
        body = {k: v for k, v in init_state_dict.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(body, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            example = (missing or unexpected)[0]
            raise WeightsError(f"weights are not a ResNet-18 state_dict ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected keys, e.g. {example})")
    return model


def load_trained(state_dict: dict, n_classes: int) -> nn.Module:
    """A trained baseline from its model.pt, in eval mode."""
    model = torchvision.models.resnet18(weights=None, num_classes=n_classes)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise WeightsError(f"model.pt does not fit a ResNet-18 with {n_classes} classes: {str(exc).splitlines()[0]}") from None
    return model.eval()
