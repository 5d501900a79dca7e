"""The ``tlkit`` command line: one click group, one subcommand per job.

Errors a user can fix (:class:`tlkit.errors.TlkitError`, and OS errors such as
a full disk or a denied permission) print one line and exit non-zero; an
interruption says how to continue.
"""

from __future__ import annotations

import os
import sys

import click

from tlkit import __version__
from tlkit.errors import TlkitError


class TlkitGroup(click.Group):
    """Turns user-fixable errors into one line instead of a traceback.

    SIGTERM and SIGHUP (schedulers, a closed terminal) are handled like Ctrl-C in
    every command (:mod:`tlkit.signals`); the exit status is 128 + the signal.
    """

    def invoke(self, ctx):
        from tlkit.atomic import storage_error
        from tlkit.signals import exit_status, termination_as_interrupt

        try:
            with termination_as_interrupt():
                return super().invoke(ctx)
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


@click.group(cls=TlkitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tlkit")
def main():
    """Two-stage transfer learning for image classification.

    \b
    Stage one embeds every image once through a frozen ResNet-18:
        tlkit embed data/ cache/feats.h5
    Stage two trains heads on the cached 512-d features in seconds:
        tlkit fit-head --head linear|logreg|quantum

    Run `tlkit COMMAND --help` for the details of each command.
    """


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


@main.command()
@click.argument("data_dir", type=click.Path(path_type=str))
@click.argument("cache", type=click.Path(path_type=str), default="cache/feats.h5", required=False)
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' (torchvision ResNet18_Weights.IMAGENET1K_V1, downloaded once into $TORCH_HOME), "
                   "'random' (seeded initialisation), or a path to a ResNet-18 state_dict file.")
@click.option("--seed", default=0, show_default=True, help="Seed for --weights random.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Images per forward pass.")
@click.option("--workers", default=_default_workers, show_default="min(4, CPU count)", type=click.IntRange(0),
              help="Decoding processes running beside the network (0: decode in the main process).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where the backbone runs; auto picks CUDA when torch sees a GPU.")
@click.option("--strict", is_flag=True,
              help="Fail before writing anything if any image cannot be decoded (default: skip and report it).")
@click.option("--max-pixels", default=None, type=click.IntRange(1),
              help="Treat larger images as decompression bombs [default: PIL's limit, about 89 megapixels].")
@click.option("--checkpoint-every", default=2048, show_default=True, type=click.IntRange(1),
              help="Rows per atomic part file: an interruption loses at most this many embedded images "
                   "(parts are also written every 30 s).")
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: this machine; ray: shards on a Ray cluster (pip install 'tlkit[ray]').")
@click.option("--ray-address", default=None, help="Ray cluster address (--backend ray); default: start or join a local one.")
@click.option("--shards", default=None, type=click.IntRange(1), help="Number of shards (--backend ray) [default: 2 per worker].")
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(0),
              help="GPUs each Ray actor reserves (--backend ray); 0 runs actors on CPUs.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
def embed(data_dir, cache, weights, seed, batch_size, workers, device, strict, max_pixels, checkpoint_every, backend,
          ray_address, shards, gpus_per_worker, progress):
    """Embed every image under DATA_DIR into the HDF5 feature cache CACHE.

    \b
    DATA_DIR is laid out as DATA_DIR/<split>/<class>/<image> (splits train,
    val, test) or DATA_DIR/<class>/<image> (stored as split 'all').
    CACHE defaults to cache/feats.h5.

    Each image goes once through ResNet-18 without its fc layer (512-d
    features), frozen, with the ImageNet eval transform (resize 256, center
    crop 224). The run is resumable and incremental: after an interruption,
    or after adding images, run the same command again and only the missing
    images are embedded. Unreadable images are skipped, listed and recorded.
    """
    # libgomp (torch's OpenMP on Linux) lets idle threads spin between parallel regions; while
    # decoding processes share the cores, the spinning steals them: embedding ran 2.2x slower on
    # 2 cores (bench/bench_embed.py). Read once when torch loads, hence here, before the import;
    # a policy the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from tlkit.data.decode import DEFAULT_MAX_PIXELS
    from tlkit.embed import embed as run_embed

    result = run_embed(
        data_dir, cache, weights=weights, seed=seed, batch_size=batch_size, workers=workers, device=device,
        strict=strict, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, backend=backend, rows_per_part=checkpoint_every,
        backend_options={"address": ray_address, "shards": shards, "gpus_per_worker": gpus_per_worker},
        progress=progress, echo=lambda msg: click.echo(msg, err=True),
    )
    if result.up_to_date:
        click.echo(f"{cache} is up to date ({result.already_cached} images cached); nothing to embed")
    for path, split, reason in result.skipped:
        click.echo(f"skipped {path}: {reason}")
    click.echo(result.summary())


# Commands that live with their feature; each module defines one click command.
# (One line per command: add yours here.)
from tlkit.commands import register_all  # noqa: E402

register_all(main)

if __name__ == "__main__":  # pragma: no cover
    main()
