"""Mapper: image tensors in, float32 features out (the frozen backbone at its layer: 512-d for resnet18)."""

from __future__ import annotations

import numpy as np
import torch

from tlkit.embed.precision import Int8Calibration, Precision


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass when none is given.

    CPU: 32; 64 was no faster on 2 cores (47.6 against 44.6 images/s for the fp32 network alone,
    within the noise of that machine), and 32 keeps decoding and the network in step. GPU: 256,
    enough work per call to keep a GPU busy with ResNet-18 at 224 px (~3 GiB of activations in
    bf16); not measured, since no GPU was at hand (docs/precision.md says so).
    """
    return 256 if device.type == "cuda" else 32


class FeatureMapper:
    """Holds the frozen backbone on its device and maps batches to numpy features."""

    def __init__(self, state_dict: dict, device: torch.device, precision: str | Precision = "fp32",
                 calibration: Int8Calibration | None = None, backbone=None):
        self.device = device
        self.precision = Precision.parse(precision)
        # fp32: BatchNorm folded, channels_last, as always; the others: see tlkit/embed/precision.py.
        # backbone: a tlkit.embed.backbones.Backbone (None: resnet18's penultimate features).
        self.model = self.precision.build(state_dict, device, calibration, backbone)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with self.precision.autocast(self.device):
            features = self.model(images)
        return features.float().cpu().numpy()
