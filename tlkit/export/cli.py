"""``tlkit export``: the click command (pyarrow is imported only by the layouts that need it)."""

from __future__ import annotations

import click

# Written out, not imported from tlkit.export.layouts, so that the CLI starts without numpy work.
# Not a click.Choice: an unknown format is one line (tlkit.export.export checks it), not a usage block.
FORMAT_NAMES = ["embedding-reader", "parquet", "npy"]


@click.command("export")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--format", "fmt", required=True, metavar="|".join(FORMAT_NAMES),
              help="embedding-reader: clip-retrieval's img_emb/img_emb_0.npy + metadata/metadata_0.parquet; "
                   "parquet: one <split>.parquet per split (fixed-size list column 'embedding', provenance in the "
                   "schema metadata); npy: one <split>.npy per split + metadata.json (labels, paths).")
@click.option("--dtype", default="float32", show_default=True, metavar="float32|float16",
              help="float16 halves the size (values rounded to float16, stated in export.json).")
def export(cache, out, fmt, dtype):
    """Export the feature cache CACHE to the new folder OUT for other tools.

    \b
    OUT also holds export.json: format, dtype, the cache's content_sha256
    (compare with `tlkit info CACHE`) and its provenance. OUT is written
    under a temporary name and appears whole; an existing OUT is refused.
    Needs pyarrow for the parquet layouts: pip install 'tlkit[export]'.

    \b
    Examples:
        tlkit export cache/feats.h5 exports/emb --format embedding-reader
        tlkit export cache/feats.h5 exports/pq --format parquet --dtype float16
        tlkit export cache/feats.h5 exports/np --format npy
    """
    from tlkit.export import export as run_export

    result = run_export(cache, out, fmt, dtype)
    click.echo(f"exported {result.rows} rows ({result.dtype}) as {result.format} -> {result.out}: "
               + ", ".join(result.files))
