"""``tlkit embed`` and ``tlkit verify``: the commands that run the backbone over images.

``verify`` is here, not with the other cache tools, because its ``--data``
check re-embeds a sample of images (:mod:`tlkit.embed.check`); without
``--data`` it runs only the cache's own integrity checks.

Imported when ``embed`` or ``verify`` runs or shows its help (:mod:`tlkit.commands`): top-level
imports stay light (click only), and torch must not be imported before ``embed`` has set
``OMP_WAIT_POLICY``.
"""

from __future__ import annotations

import json
import os
import sys

import click


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


@click.command()
@click.argument("data_dir", type=click.Path(path_type=str), required=False)
@click.argument("cache", type=click.Path(path_type=str), default="cache/feats.h5", required=False)
@click.option("--backbone", default="resnet18", show_default=True,
              help="Any torchvision classification model by name (resnet50, efficientnet_b0, convnext_tiny, vit_b_16, ...), "
                   "or timm:NAME (pip install 'tlkit[timm]'). See --list-backbones.")
@click.option("--layer", default=None,
              help="A node of the backbone's graph (torchvision: e.g. layer3; timm: a feature index such as 2 or -1); "
                   "spatial outputs are average-pooled [default: the penultimate features]. See --list-layers.")
@click.option("--list-backbones", is_flag=True, help="Print every --backbone value and exit.")
@click.option("--list-layers", is_flag=True, help="Print every --layer of --backbone with its output shape at 224 px, and exit.")
@click.option("--label-key", default=None, metavar="FIELD",
              help="Tar shards: read each label from this field of KEY.json [default: the text of KEY.cls].")
@click.option("--split-key", default=None, metavar="FIELD",
              help="Tar shards: read each split (train/val/test) from this field of KEY.json [default: the shard's "
                   "folder or file name, e.g. train/00000.tar or val-00003.tar, else 'all'].")
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' (the backbone's DEFAULT torchvision weights, e.g. ResNet18_Weights.IMAGENET1K_V1, with "
                   "their own transform, downloaded once into $TORCH_HOME; timm: its default pretrained tag), "
                   "'random' (seeded initialisation), or a path to a state_dict file of the backbone.")
@click.option("--seed", default=0, show_default=True, help="Seed for --weights random.")
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help="Images per forward pass [default: 32 on a CPU, 256 on a GPU].")
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
@click.option("--shards", default=None, type=click.IntRange(1), help="Number of shards (--backend ray) [default: 2 per worker; tar input: one per tar file].")
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(0),
              help="GPUs each Ray actor reserves (--backend ray); 0 runs actors on CPUs.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
# The choices are tlkit.embed.precision.PRECISIONS, written out: importing it here would load torch.
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16", "int8"]),
              help="Arithmetic of the backbone: fp32 (reproducible bit for bit), bf16 (autocast, CPU or CUDA), "
                   "fp16 (CUDA only), int8 (CPU, post-training static quantization). Features are stored as float32.")
@click.option("--allow-slow", is_flag=True,
              help="Run a --precision measured several times slower than fp32 on this CPU (bf16 without "
                   "avx512_bf16/amx_bf16: about 5x), which is otherwise refused (docs/precision.md#slow-precisions).")
@click.option("--fast-decode", is_flag=True,
              help="Decode JPEGs at least twice the resize target at a reduced scale (1/2, 1/4, 1/8; never below it) "
                   "before resizing: much faster on large photos, slightly other pixels. Recorded in the cache's "
                   "transform, so later runs into the cache need it too (docs/embedding.md#decoding-and---fast-decode).")
# The choices are tlkit.data.views.AUGMENTS, written out, as for --precision.
@click.option("--views", "views", default=0, show_default=True, type=click.IntRange(0),
              help="Also store K augmented views of every training image (splits train, all) beside its centre crop, "
                   "in /<split>/views, from the image decoded once; fit-head trains on them (docs/embedding.md#augmented-views).")
@click.option("--augment", default="tutorial", show_default=True, type=click.Choice(["tutorial", "crop", "flip"]),
              help="The views' augmentation (with --views): tutorial = RandomResizedCrop(224, scale 0.08-1, "
                   "ratio 3/4-4/3) + RandomHorizontalFlip(0.5), as the PyTorch transfer-learning tutorial trains; "
                   "crop or flip alone. Each view is seeded by (image path, view index).")
def embed(data_dir, cache, backbone, layer, list_backbones, list_layers, label_key, split_key, weights, seed,
          batch_size, workers, device, strict, max_pixels, checkpoint_every, backend, ray_address, shards,
          gpus_per_worker, progress, precision, allow_slow, fast_decode, views, augment):
    """Embed every image under DATA_DIR into the HDF5 feature cache CACHE.

    \b
    DATA_DIR is laid out as DATA_DIR/<split>/<class>/<image> (splits train,
    val, test) or DATA_DIR/<class>/<image> (stored as split 'all').
    CACHE defaults to cache/feats.h5.

    \b
    DATA_DIR may also be webdataset / img2dataset tar shards: a pattern
    ('shards/{00000..00099}.tar', quoted), one .tar, or a folder of .tar
    files. Each sample is KEY.jpg (or another image type) with its label in
    KEY.cls or in a field of KEY.json (--label-key); it is stored as SHARD/KEY.

    Each image goes once through the frozen backbone (default ResNet-18
    without its fc layer: 512-d features) with its weights' eval transform
    (ImageNet: resize 256, center crop 224). The run is resumable and
    incremental: after an interruption, or after adding images, run the same
    command again and only the missing images are embedded. Unreadable
    images are skipped, listed and recorded.

    \b
    Examples:
        tlkit embed data/ cache/feats.h5
        tlkit embed data/ cache/views.h5 --views 10 --augment tutorial
        tlkit embed data/ cache/r50-l3.h5 --backbone resnet50 --layer layer3
        tlkit embed --list-layers --backbone efficientnet_b0
    """
    if list_backbones or list_layers:
        _print_listing(list_backbones, backbone)
        return
    if data_dir is None:
        raise click.UsageError("Missing argument 'DATA_DIR'.")
    # libgomp (torch's OpenMP on Linux) lets idle threads spin between parallel regions; while
    # decoding processes share the cores, the spinning steals them: embedding ran 2.2x slower on
    # 2 cores (bench/bench_embed.py). Read once when torch loads, hence here, before the import;
    # a policy the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from tlkit.data.decode import DEFAULT_MAX_PIXELS
    from tlkit.embed import embed as run_embed
    from tlkit.embed.job import RayOptions

    result = run_embed(
        data_dir, cache, weights=weights, seed=seed, batch_size=batch_size, workers=workers, device=device,
        strict=strict, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, backend=backend, rows_per_part=checkpoint_every,
        ray=RayOptions(address=ray_address, shards=shards, gpus_per_worker=gpus_per_worker),
        progress=progress, echo=lambda msg: click.echo(msg, err=True), precision=precision, fast_decode=fast_decode,
        backbone=backbone, layer=layer, allow_slow=allow_slow,
        label_key=label_key, split_key=split_key,
        views=views, augment=augment,
    )
    if result.up_to_date:
        click.echo(f"{cache} is up to date ({result.already_cached} images cached); nothing to embed")
    for path, split, reason in result.skipped:
        click.echo(f"skipped {path}: {reason}")
    click.echo(result.summary())


def _print_listing(backbones: bool, name: str) -> None:
    from tlkit.embed.backbones import Backbone, list_backbones

    if backbones:
        for entry in list_backbones():
            click.echo(entry)
        return
    chosen = Backbone.parse(name)
    default = chosen.features()
    click.echo(f"# layers of {chosen.name} (output shape at 224 px; default: {default.layer}, {default.dim}-d)")
    for node, shape in chosen.layers():
        click.echo(f"{node}\t{shape}")


@click.command()
@click.argument("cache", type=click.Path(path_type=str))
@click.option("--data", "data_dir", type=click.Path(path_type=str), default=None,
              help="The image folder or tar shards (the pattern or folder given to embed) the cache was made from: "
                   "re-embed a sample and compare [default: integrity checks only].")
@click.option("--sample", default=32, show_default=True, type=click.IntRange(0),
              help="How many randomly chosen images to re-embed (with --data).")
@click.option("--seed", default=0, show_default=True, help="Seed for choosing the sample.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="State_dict file to re-embed with; needed when the cache was made with --weights PATH "
                   "(checked against the recorded sha256) [default: the weights the cache records].")
@click.option("--tolerance", default=None, type=click.FloatRange(0),
              help="Largest absolute difference allowed between a stored and a fresh feature value "
                   "[default: the recorded precision's: 1e-4 for fp32 and int8, 1e-2 for bf16 and fp16].")
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
    Reproduction (with --data DIR, or the tar shards' pattern or folder):
    embeds a seeded random sample of the images again with the weights,
    transform and precision the cache records (int8: from its stored
    calibration) and compares with the stored features (absolute tolerance
    1e-4 for fp32 and int8: a rerun on the same kind of device agrees to
    about 1e-6, while other weights, an edited image or another torchvision
    moves features by 1e-2 or more;
    1e-2 for bf16/fp16, whose rounding may differ on another CPU or GPU).

    Prints each check that held and each problem on its own line; exits 0
    only when there is no problem, 1 otherwise.

    \b
    Examples:
        tlkit verify cache/feats.h5
        tlkit verify cache/feats.h5 --data data/ --sample 64
        tlkit verify cache/feats.h5 --data data/ --weights my_resnet18.pt
        tlkit verify cache/feats.h5 --data 'shards/{00000..00099}.tar'
    """
    if data_dir is None:
        from tlkit.cache.verify import verify_cache

        report = verify_cache(cache, progress=progress)
    else:
        from tlkit.embed.check import verify_with_data

        report = verify_with_data(cache, data_dir, sample=sample, seed=seed, weights=weights, tolerance=tolerance,
                                  device=device, progress=progress)
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
