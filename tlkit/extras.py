"""Optional dependencies: imported only where a feature needs them, named by their extra when missing.

``tlkit[track]`` (tensorboard, mlflow), ``tlkit[export]`` (pyarrow), ``tlkit[shards]`` (webdataset),
``tlkit[ray]`` (ray). A missing one is a one-line :class:`TlkitError` naming the ``pip install``.
"""

from __future__ import annotations

import importlib

from tlkit.errors import TlkitError


class MissingExtra(TlkitError):
    """An optional package a feature needs is not installed."""


def require(module: str, extra: str, feature: str):
    """``import module`` or a one-line error: ``feature`` needs it, ``pip install 'tlkit[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{feature} needs the package {module.split('.')[0]}: pip install 'tlkit[{extra}]'") from None
