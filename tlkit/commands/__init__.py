"""Subcommands beyond ``embed``, one module per feature, registered on the ``tlkit`` group.

Each entry is (module, attribute of the click command). Modules are imported
when the CLI starts, so keep their top-level imports light (import torch,
pennylane, ray... inside the command function).
"""

from __future__ import annotations

import importlib

COMMANDS: list[tuple[str, str]] = [
    ("tlkit.cache.cli", "info"),
    ("tlkit.cache.cli", "verify"),
    ("tlkit.cache.cli", "merge"),
    ("tlkit.heads.cli", "fit_head"),
    ("tlkit.baseline.cli", "train_scratch"),
    ("tlkit.report.cli", "report"),
    ("tlkit.predict.cli", "predict"),
]


def register_all(group) -> None:
    for module, attr in COMMANDS:
        group.add_command(getattr(importlib.import_module(module), attr))
