"""Every ``tlkit`` subcommand, in one table, loaded only when it is used.

Each command is defined in the module of its feature; this table names it,
the module and attribute of its click command, and its one-line summary for
``tlkit --help``. A new command is one more line.

:class:`LazyGroup` imports a command's module only when that command runs or
shows its ``--help``: ``tlkit --help`` lists every command from the table
without importing any of them, and ``tlkit fit-head`` never imports what
``embed``, ``predict`` or ``report`` need. So a feature's package may import
what it uses at its top level; only the cli modules, which must answer
``--help`` quickly, keep torch and friends inside the command function.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import click


class Command(NamedTuple):
    name: str  # as typed: tlkit NAME
    module: str  # the module that defines its click command
    attribute: str  # the click command's name in that module
    summary: str  # its line in `tlkit --help` (shown without importing the module)


COMMANDS: tuple[Command, ...] = (
    Command("embed", "tlkit.embed.cli", "embed", "Embed every image of a folder into the HDF5 feature cache."),
    Command("verify", "tlkit.embed.cli", "verify", "Check a feature cache is intact; with --data, reproducible."),
    Command("info", "tlkit.cache.cli", "info", "Show what a feature cache holds and how far an embed got."),
    Command("merge", "tlkit.cache.cli", "merge", "Merge feature caches of one feature space into one cache."),
    Command("fit-head", "tlkit.heads.cli", "fit_head", "Train a head on the cached features into a run folder."),
    Command("train-scratch", "tlkit.baseline.cli", "train_scratch", "Train ResNet-18 end to end on the images (the baseline)."),
    Command("report", "tlkit.report.cli", "report", "Compare finished runs: a table with intervals, figures."),
    Command("predict", "tlkit.predict.cli", "predict", "Label new images with the model of a finished run."),
    Command("export", "tlkit.export.cli", "export", "Export a cache as embedding-reader, parquet or npy files."),
    Command("evaluate", "tlkit.evaluate.cli", "evaluate", "Score a finished quantum run under noise, shots or a device."),
)


class LazyGroup(click.Group):
    """A click group whose subcommands are :data:`COMMANDS`, each imported on first use."""

    def __init__(self, *args, commands: tuple[Command, ...] = COMMANDS, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = {c.name: c for c in commands}

    def list_commands(self, ctx) -> list[str]:
        return [*self.lazy, *(n for n in super().list_commands(ctx) if n not in self.lazy)]  # the table's order

    def get_command(self, ctx, name: str):
        entry = self.lazy.get(name)
        if entry is None:
            return super().get_command(ctx, name)
        if name not in self.commands:  # imported once, then kept like an eagerly added command
            command = getattr(importlib.import_module(entry.module), entry.attribute)
            command.short_help = command.short_help or entry.summary  # one summary, loaded or not
            self.add_command(command, name)
        return self.commands[name]

    def format_commands(self, ctx, formatter) -> None:
        """The command list of ``tlkit --help``, from the table: importing every command would cost seconds."""
        rows = [(c.name, c.summary) for c in self.lazy.values()]
        rows += [(n, self.commands[n].get_short_help_str(formatter.width)) for n in super().list_commands(ctx)
                 if n not in self.lazy and not self.commands[n].hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
