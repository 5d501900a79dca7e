"""The ``tlkit`` command line: one click group, one subcommand per job.

Errors a user can fix (:class:`tlkit.errors.TlkitError`, and OS errors such as
a full disk or a denied permission) print one line and exit non-zero; an
interruption says how to continue.
"""

from __future__ import annotations

import sys

import click

from tlkit import __version__
from tlkit.commands import LazyGroup
from tlkit.errors import TlkitError


class TlkitGroup(LazyGroup):
    """Turns user-fixable errors into one line instead of a traceback.

    Its subcommands are the table of :mod:`tlkit.commands`, each imported when it is used.

    A usage error (an unknown option, a value out of its range) is one line too, with click's exit status 2.

    SIGTERM and SIGHUP (schedulers, a closed terminal) are handled like Ctrl-C in
    every command (:mod:`tlkit.signals`); the exit status is 128 + the signal.
    """

    def invoke(self, ctx):
        from tlkit.atomic import storage_error
        from tlkit.signals import exit_status, termination_as_interrupt

        try:
            with termination_as_interrupt():
                return super().invoke(ctx)
        except click.UsageError as exc:
            _usage_error(exc, ctx)
        except TlkitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:
            click.echo("interrupted: finished work is kept; run the same command again to continue", err=True)
            sys.exit(exit_status(exc))
        except (OSError, RuntimeError) as exc:
            full = storage_error(exc)  # disk full, quota, read-only, I/O error: h5py raises some as RuntimeError
            if full is not None:
                click.echo(f"error: {full}", err=True)
                sys.exit(1)
            if not isinstance(exc, OSError):
                raise  # any other RuntimeError is a bug: keep its traceback
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(1)

    def parse_args(self, ctx, args):
        try:  # the group's own options (`tlkit --no-such-option`) are parsed before invoke()
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _usage_error(exc, ctx)


def _usage_error(exc: click.UsageError, ctx) -> None:
    # click's own form is four lines (usage, hint, blank, error); bad input gets one here, as everywhere
    where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
    click.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
    sys.exit(exc.exit_code)


@click.group(cls=TlkitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tlkit")
def main():
    """Two-stage transfer learning for image classification.

    \b
    Stage one embeds every image once through a frozen ResNet-18:
        tlkit embed data/ cache/feats.h5
    Stage two trains heads on the cached features (512-d for the default resnet18) in seconds:
        tlkit fit-head --head linear|logreg|quantum|bottleneck --seeds 5

    Run `tlkit COMMAND --help` for the details of each command.
    """


def run() -> None:
    """The ``tlkit`` command: :func:`main`, then the process ends without the interpreter's teardown
    (:func:`tlkit.signals.end_process`, 1.4 s after a head's imports). An uncaught exception, a bug, ends as
    Python ends it, with its traceback."""
    from tlkit.signals import end_process, exit_code

    try:
        main()
        status = 0
    except SystemExit as exc:  # click ends every command this way
        status = exit_code(exc)
    end_process(status)


if __name__ == "__main__":  # pragma: no cover
    run()
