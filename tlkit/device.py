"""Where torch runs: ``--device auto|cpu|cuda``, one rule for every command."""

from __future__ import annotations

from tlkit.errors import TlkitError


class DeviceError(TlkitError):
    """The asked-for device is not available here."""


def select_device(name: str):
    """``auto`` picks CUDA when torch sees a GPU; ``cuda`` without one is a one-line error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {name} was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"--device {name!r} is not a device torch knows ({exc})") from None
