"""Declared hyperparameters: one record per setting, from which everything else is derived.

A :class:`HParam` states a setting's name, default, constraint and help text
once. From it come

* the check an estimator runs before training (:meth:`HParam.problem`),
* the click option of a command (:func:`option`, :func:`options`),

so a default, a range or a help text is never written twice. The training
loop's settings are declared on :class:`tlkit.train.config.TrainConfig`; each
head's own settings in :mod:`tlkit.heads.registry`.

The commands' ``--help`` imports this module: it imports click only.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import click


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its estimator keyword ``name``, default, constraint and help."""

    name: str
    default: object
    help: str
    type: type | None = None  # int, float or str; None: from the default (sequences and other values: no check)
    min: float | None = None
    min_open: bool = False  # True: the value must be greater than ``min``
    choices: tuple[str, ...] | None = None
    cli_choices: tuple[str, ...] | None = None  # the choices the command line offers (default: all of them)
    optional: bool = False  # None is a valid value
    default_text: str | None = None  # what the help shows as the default, when the value itself says too little
    aliases: tuple[str, ...] = ()  # old flags still accepted by the command line, hidden from --help
    cli: bool = True  # False: settable from Python only
    section: str | None = None  # heading of its group in a command's --help (None: the general options)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def value_type(self) -> type | None:
        if self.type is not None:
            return self.type
        for candidate in (bool, int, float, str):  # bool first: it is an int too
            if isinstance(self.default, candidate):
                return candidate
        return None

    def problem(self, value) -> str | None:
        """Why ``value`` cannot work for this setting (one line), or None when it can."""
        if value is None:
            return None if self.optional else f"{self.name} must be set, got None"
        kind = self.value_type
        if kind is int and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
            return f"{self.name} must be an integer, got {value!r}"
        if kind is float and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
            return f"{self.name} must be a number, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}; got {value!r}"
        if self.min is not None:
            if self.min_open and not value > self.min:
                return f"{self.name} must be {'positive' if self.min == 0 else f'greater than {self.min:g}'}, got {value}"
            if not self.min_open and not value >= self.min:
                return f"{self.name} must be at least {self.min:g}, got {value}"
        return None

    def parse(self, text: str):
        """The value a command line's ``text`` means for this setting (a ``--grid`` value), checked against the
        declaration; ValueError with one line for text that cannot be one."""
        text = text.strip()
        kind = self.value_type
        if self.optional and text.lower() == "none":
            value = None
        elif kind is int:
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{self.name} must be an integer, got {text!r}") from None
        elif kind is float:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{self.name} must be a number, got {text!r}") from None
        elif kind is str:
            value = text
        else:
            raise ValueError(f"{self.name} takes no value from the command line")
        problem = self.problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def click_type(self) -> click.ParamType | None:
        kind = self.value_type
        if self.choices is not None:
            return click.Choice(list(self.cli_choices or self.choices))
        if kind is int:
            return click.INT if self.min is None else click.IntRange(min=int(self.min), min_open=self.min_open)
        if kind is float:
            return click.FLOAT if self.min is None else click.FloatRange(min=self.min, min_open=self.min_open)
        return None


def hparam(default, help: str, **constraints):
    """A dataclass field declared as a hyperparameter (see :class:`tlkit.train.config.TrainConfig`)."""
    return field(default=default, metadata={"hparam": dict(help=help, **constraints)})


def hparams_of(dataclass_type) -> tuple[HParam, ...]:
    """The :class:`HParam` records of a dataclass whose fields were declared with :func:`hparam`."""
    out = []
    for f in fields(dataclass_type):
        spec = f.metadata.get("hparam")
        if spec is not None:
            out.append(HParam(name=f.name, default=f.default, **spec))
    return tuple(out)


class HParamOption(click.Option):
    """A click option made from an :class:`HParam`: it knows its help section and hides old aliases."""

    def __init__(self, *args, section: str | None = None, hidden_aliases: Iterable[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section
        self.hidden_aliases = tuple(hidden_aliases)

    def get_help_record(self, ctx):
        opts = self.opts
        self.opts = [o for o in opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


def option(param: HParam, *, help: str | None = None, section: str | None = None):
    """The click option of ``param`` (``help`` and ``section`` override the declared ones for one command)."""
    text = help if help is not None else param.help
    if param.default_text is not None:  # a default the value cannot say (None: "analytic expectation values")
        text = f"{text.rstrip('.')} [default: {param.default_text}]."
    return click.option(
        param.flag, *param.aliases, param.name, cls=HParamOption, default=param.default,
        show_default=param.default_text is None and param.default is not None, type=param.click_type(), help=text,
        section=section if section is not None else param.section, hidden_aliases=param.aliases,
    )


def options(params: Iterable[HParam], *, help: dict[str, str] | None = None):
    """One decorator adding the click options of ``params``, shown in the order given."""
    return stacked([option(p, help=(help or {}).get(p.name)) for p in params if p.cli])


def stacked(decorators: list):
    """One decorator applying ``decorators`` so that click lists their options in the order given."""

    def apply(command):
        for decorate in reversed(decorators):  # click shows the last-applied decorator first
            command = decorate(command)
        return command

    return apply


class SectionedCommand(click.Command):
    """A click command whose --help lists options under the sections their :class:`HParamOption` names."""

    def format_options(self, ctx, formatter):
        sections: dict[str, list] = {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and not isinstance(param, click.Argument):
                sections.setdefault(getattr(param, "section", None) or "Options", []).append(record)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)
