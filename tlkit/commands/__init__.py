"""Every ``tlkit`` subcommand, registered on the click group of :mod:`tlkit.cli`.

Each command is defined in the module of its feature; this list names them,
as (module, attribute of the click command). A new command is one more line.
The modules are imported when the CLI starts, so keep their top-level imports
light (import torch, pennylane, ray... inside the command function).
"""

from __future__ import annotations

import importlib

COMMANDS: list[tuple[str, str]] = [
    ("tlkit.embed.cli", "embed"),
    ("tlkit.embed.cli", "verify"),
    ("tlkit.cache.cli", "info"),
    ("tlkit.cache.cli", "merge"),
    ("tlkit.heads.cli", "fit_head"),
    ("tlkit.baseline.cli", "train_scratch"),
    ("tlkit.report.cli", "report"),
    ("tlkit.predict.cli", "predict"),
    ("tlkit.evaluate.cli", "evaluate"),
]


def register_all(group) -> None:
    for module, attr in COMMANDS:
        group.add_command(getattr(importlib.import_module(module), attr))
