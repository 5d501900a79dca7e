"""``tlkit info``, ``tlkit merge``: the cache as a tool of its own.

Top-level imports stay light (click only): ``info`` must answer in well
under a second. (``tlkit verify``, whose ``--data`` check re-embeds images,
is defined on the embed side: :mod:`tlkit.embed.cli`.)
"""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("cache", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object (for scripts).")
@click.option("--all-classes", is_flag=True, help="List every class in the count table (by default the first 30).")
def info(cache, as_json, all_classes):
    """Show what is inside the feature cache CACHE, and how far an embed into it has got.

    \b
    Prints: whether the cache is finished (or, while `tlkit embed` runs or
    after it was interrupted, how many images of how many are done), the
    splits with their image counts per class, class names, feature shape,
    dtype and chunking, the files that were skipped and why, the full
    provenance (backbone, weights and their sha256, transform, versions,
    data root), what it was merged from, and the file size.

    Reads metadata and labels only, so it answers in well under a second for
    millions of rows, and it is safe to run while an embed is writing.

    \b
    Examples:
        tlkit info cache/feats.h5
        tlkit info cache/feats.h5 --json | jq '.splits.train.per_class'
    """
    from tlkit.cache.info import cache_info, format_info

    details = cache_info(cache)
    click.echo(json.dumps(details, indent=1) if as_json else format_info(details, all_classes=all_classes))


@click.command()
@click.argument("out", type=click.Path(path_type=str))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not one of the inputs.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
def merge(out, inputs, overwrite, progress):
    """Merge the feature caches INPUTS into one cache OUT.

    \b
    The inputs must share one feature space (backbone, layer, weights
    sha256, transform, feature size); otherwise nothing is written and the
    message names the field that differs. Rows are de-duplicated by image
    path (the first input listing a path wins) and sorted; when the inputs'
    class lists differ, labels are remapped to the sorted union of class
    names, and the output's `merged_from` attribute records every input and
    its label map (see `tlkit info OUT`).

    \b
    OUT is locked while it is written (a second merge or embed into it is
    refused), written under a temporary name and renamed into place: a
    killed merge never leaves a half-written OUT, and running the same
    command again redoes it. Memory use does not grow with the cache size.
    To add to an existing cache, list it as an input too.

    \b
    Examples:
        tlkit merge cache/all.h5 cache/part1.h5 cache/part2.h5
        tlkit merge cache/feats.h5 cache/feats.h5 cache/new_photos.h5
    """
    from tqdm.auto import tqdm

    from tlkit.cache.merge import merge as run_merge

    with tqdm(unit="row", desc="merge", disable=None if progress is None else not progress) as bar:
        def start(total: int) -> None:
            bar.reset(total=total)

        result = run_merge(out, inputs, overwrite=overwrite, on_rows=bar.update, on_start=start)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(result.summary())
