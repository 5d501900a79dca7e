"""``tlkit info``, ``tlkit verify``, ``tlkit merge``: the cache as a tool of its own.

Top-level imports stay light (click only): ``info`` must answer in well
under a second, so torch is imported only by ``verify --data`` and
``merge``.
"""

from __future__ import annotations

import json
import sys

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
@click.argument("cache", type=click.Path(path_type=str))
@click.option("--data", "data_dir", type=click.Path(path_type=str), default=None,
              help="The image folder the cache was made from: re-embed a sample and compare [default: integrity checks only].")
@click.option("--sample", default=32, show_default=True, type=click.IntRange(0),
              help="How many randomly chosen images to re-embed (with --data).")
@click.option("--seed", default=0, show_default=True, help="Seed for choosing the sample.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="State_dict file to re-embed with; needed when the cache was made with --weights PATH "
                   "(checked against the recorded sha256) [default: the weights the cache records].")
@click.option("--tolerance", default=1e-4, show_default=True, type=click.FloatRange(0),
              help="Largest absolute difference allowed between a stored and a fresh feature value.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where to re-embed. Use the kind of device the cache was made on: a GPU's TF32 "
                   "convolutions differ from a CPU's float32 by more than the default tolerance.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
def verify(cache, data_dir, sample, seed, weights, tolerance, device, as_json, progress):
    """Check that the feature cache CACHE is intact and still matches its backbone.

    \b
    Integrity (always): reads every chunk of features and labels, so HDF5
    validates their fletcher32 checksums; checks that features, labels and
    paths have equal row counts, that no feature is NaN or inf, that labels
    index the class list, that paths are unique and sorted, and that the
    list of skipped files agrees with the rows.

    \b
    Reproduction (with --data DIR): embeds a seeded random sample of the
    images again with the weights and transform the cache records and
    compares with the stored features (absolute tolerance 1e-4: a rerun on
    the same kind of device agrees to about 1e-6, while other weights, an
    edited image or another torchvision moves features by 1e-2 or more).

    Prints each check that held and each problem on its own line; exits 0
    only when there is no problem, 1 otherwise.

    \b
    Examples:
        tlkit verify cache/feats.h5
        tlkit verify cache/feats.h5 --data data/ --sample 64
        tlkit verify cache/feats.h5 --data data/ --weights my_resnet18.pt
    """
    from tlkit.cache.verify import verify_cache

    report = verify_cache(cache, data_dir=data_dir, sample=sample, seed=seed, weights=weights,
                          tolerance=tolerance, device=device, progress=progress)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=1))
    else:
        for line in report.passed:
            click.echo(f"ok       {line}")
        for line in report.notes:
            click.echo(f"note     {line}")
        for line in report.problems:
            click.echo(f"PROBLEM  {line}")
        verdict = "verified: no problems" if report.ok else f"{len(report.problems)} problem(s) found"
        click.echo(f"{verdict} in {cache}")
    sys.exit(0 if report.ok else 1)


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
