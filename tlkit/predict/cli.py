"""``tlkit predict``: the command line for applying a finished run to new images."""

from __future__ import annotations

import sys

import click


@click.command("predict")
@click.argument("run", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "csv", "json"]),
              help="table: aligned columns for the terminal; csv / json: for files and programs.")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Write to this file instead of standard output.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Head runs on a cache embedded from a weights file: the path of that file "
                   "(checked against the sha256 the cache recorded).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0),
              help="Decoding processes beside the network.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--max-pixels", default=None, type=click.IntRange(1),
              help="Treat larger images as decompression bombs [default: PIL's limit, about 89 megapixels].")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
def predict(run, images, fmt, output, weights, batch_size, workers, device, max_pixels, progress):
    """Label new images with the model of a finished RUN folder.

    \b
    IMAGES are image files and/or folders (searched recursively for images).
    For a fit-head run, every image goes through the backbone the run's
    cache was embedded with (its weights, checked against their recorded
    sha256, and its transform), then through the head; for a train-scratch
    run, through the trained ResNet-18. Each image gets the predicted label
    and one probability per class (two classes: label = class 1 when its
    probability is at least 0.5, as in the run's metrics).

    \b
    Images that cannot be decoded are listed on standard error and skipped;
    the exit status is non-zero only when no image could be predicted.

    \b
    Examples:
        tlkit predict runs/linear photos/ new_ant.jpg
        tlkit predict runs/scratch data/val --format csv -o predictions.csv
    """
    from tlkit.data.decode import DEFAULT_MAX_PIXELS
    from tlkit.errors import TlkitError
    from tlkit.predict.output import to_csv, to_json, to_table
    from tlkit.predict.predictor import load_predictor, predict_images

    predictor = load_predictor(run, weights=weights, device=device)
    show = progress if progress is not None else sys.stderr.isatty()
    result = predict_images(predictor, images, batch_size=batch_size, workers=workers,
                            max_pixels=max_pixels or DEFAULT_MAX_PIXELS, progress=show)
    for path, reason in result.errors:
        click.echo(f"skipped {path}: {reason}", err=True)
    if not result.paths:
        raise TlkitError(f"no image could be predicted ({len(result.errors)} skipped)")
    text = {"table": lambda: to_table(result), "csv": lambda: to_csv(result), "json": lambda: to_json(result, run)}[fmt]()
    if output:
        from tlkit.atomic import atomic_text

        atomic_text(output, text)
        click.echo(f"{len(result.paths)} predictions written to {output}", err=True)
    else:
        click.echo(text, nl=False)
