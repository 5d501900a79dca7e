"""Mapper: image tensors in, 512-d float32 features out (the frozen backbone)."""

from __future__ import annotations

import numpy as np
import torch

from tlkit.embed.backbone import build_backbone, fuse_batchnorm


class FeatureMapper:
    """Holds the frozen backbone on its device and maps batches to numpy features."""

    def __init__(self, state_dict: dict, device: torch.device):
        self.device = device
        # channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their fastest convolutions;
        # folding BatchNorm into the convolutions saves a pass over every activation.
        model = fuse_batchnorm(build_backbone(state_dict))
        self.model = model.to(device=device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return self.model(images).float().cpu().numpy()
