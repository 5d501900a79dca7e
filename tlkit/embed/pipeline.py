"""``tlkit embed``: plan, distribute, publish.

1. check the output path and discover the images;
2. resolve the weights and transform into the cache's provenance;
3. take the cache's lock, read what is already cached (the finished cache
   and, after an interruption, ``<cache>.parts/``) and refuse a different
   feature space;
4. embed only the images that are not cached yet, into part files;
5. publish: stitch the old cache and the parts into a new file and rename
   it over the old one, then drop the parts.

Killing the process at any moment leaves the previous cache intact and the
finished parts on disk; the same command then continues where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import h5py
import torch
import torchvision
from tqdm.auto import tqdm

import tlkit
from tlkit.atomic import remove_stale_tmp, storage_errors
from tlkit.cache.assemble import assemble
from tlkit.cache.lock import CacheLock
from tlkit.cache.parts import (
    PARTS_MANIFEST,
    PartsScan,
    discard_parts,
    part_files,
    parts_dir_of,
    read_manifest,
    scan_parts,
    start_parts,
)
from tlkit.cache.reader import H5_LOCKING, check_content_digest, class_names_of, open_h5, read_paths, read_skipped, split_names
from tlkit.cache.schema import FORMAT, Provenance
from tlkit.data.decode import DEFAULT_MAX_PIXELS
from tlkit.data.reader import check_files
from tlkit.data.shards import discover_source
from tlkit.data.transforms import TransformSpec
from tlkit.data.views import ViewSpec
from tlkit.device import select_device
from tlkit.embed import precision as precisions
from tlkit.embed.backbones import Backbone
from tlkit.embed.distributor import get_distributor
from tlkit.embed.job import EmbedJob, RayOptions
from tlkit.embed.runner import WorkItem
from tlkit.errors import CacheError, DataError
from tlkit.weights import Weights


@dataclass
class EmbedResult:
    out: Path
    embedded: int = 0
    already_cached: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, split, reason)
    seconds: float = 0.0
    up_to_date: bool = False

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"embedded {self.embedded}, skipped {len(self.skipped)}, already cached {self.already_cached}, "
            f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s -> {self.out}"
        )


def check_output_path(out: Path) -> None:
    """Refuse anything we must not overwrite before doing any work."""
    if out.is_dir():
        raise CacheError(f"output {out} is a folder; give a file path such as {out}/feats.h5")
    if out.exists():
        if not h5py.is_hdf5(out):
            raise CacheError(f"output {out} exists and is not an HDF5 file; refusing to overwrite it")
        try:
            with h5py.File(out, "r", locking=H5_LOCKING) as f:
                fmt = f.attrs.get("format")
        except OSError as exc:
            raise CacheError(f"output {out} exists but cannot be read as HDF5 ({exc}); refusing to overwrite it") from None
        if fmt != FORMAT:
            raise CacheError(f"output {out} is an HDF5 file but not a tlkit cache; refusing to overwrite it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the folder for {out}: {exc.strerror}") from None


def make_provenance(weights_id: str, weights_sha256: str, spec: TransformSpec, data_root: Path, created: str,
                    precision: dict[str, str] | None = None, views: ViewSpec | None = None,
                    backbone: Backbone | None = None) -> Provenance:
    """``precision``: :meth:`Precision.provenance_attrs` (default: fp32); ``views``: K views per training image;
    ``backbone``: default resnet18's penultimate features."""
    backbone = backbone or Backbone()
    features = backbone.features()
    return Provenance(
        backbone=backbone.name,
        layer=features.layer,
        pooling=features.pooling,
        weights_id=weights_id,
        weights_sha256=weights_sha256,
        transform=spec.to_json(),
        feature_dim=features.dim,
        tlkit_version=tlkit.__version__,
        torch_version=str(torch.__version__),
        torchvision_version=str(torchvision.__version__),
        created=created,
        data_root=str(data_root.resolve()),
        **(precision or {}),
        views=views.to_json() if views is not None else "",
    )


def _refuse_mix(where: str, theirs: Provenance, ours: Provenance) -> None:
    diff = theirs.feature_space_mismatch(ours)
    if diff:
        raise CacheError(
            f"{where} holds features of another feature space ({'; '.join(diff)}); feature spaces never mix: "
            f"embed into a new file, or rerun with the backbone, layer, weights, transform, precision and views it was made with"
        )


def _view_spec(k: int, augment: str, spec: TransformSpec) -> ViewSpec | None:
    """The views of ``--views K --augment NAME`` (crops of the transform's size), or None for K = 0."""
    if not k:
        return None
    try:
        return ViewSpec(k=int(k), augment=augment, size=spec.crop)
    except ValueError as exc:
        raise DataError(f"--views {k} --augment {augment}: {exc}") from None


def _adopt_calibration(ours: Provenance, theirs: Provenance) -> Provenance:
    """``ours`` with the int8 calibration ``theirs`` records, when both are int8 and ours has none yet.

    The first run into a cache calibrates; every later one (resume, new images, Ray shards,
    verify, predict) rebuilds the network from the stored numbers, so all rows share one
    quantized network (see tlkit/embed/precision.py).
    """
    if ours.precision == theirs.precision == "int8" and theirs.int8_calibration and not ours.int8_calibration:
        return replace(ours, int8_calibration=theirs.int8_calibration,
                       int8_calibration_sha256=theirs.int8_calibration_sha256)
    return ours


def _manifest_provenance(parts_dir: Path) -> Provenance | None:
    try:
        manifest = read_manifest(parts_dir)
        return None if manifest is None else Provenance.from_attrs(manifest["provenance"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{parts_dir / PARTS_MANIFEST} is damaged ({exc}); delete {parts_dir} to start over") from None


def _read_parts(parts_dir: Path, theirs: Provenance | None, ours: Provenance) -> tuple[PartsScan, str | None]:
    """The finished parts of the interrupted run whose manifest records ``theirs`` (refused unless it is
    this feature space), and when that run started."""
    if theirs is None:
        return PartsScan(), None
    _refuse_mix(f"the interrupted run in {parts_dir}", theirs, ours)
    return scan_parts(parts_dir), theirs.created


def embed(
    data_root: str | Path,
    out: str | Path,
    weights: str | Weights = "imagenet",
    seed: int = 0,
    batch_size: int | None = None,
    workers: int = 2,
    device: str = "auto",
    strict: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    backend: str = "local",
    rows_per_part: int = 2048,
    ray: RayOptions | None = None,
    progress: bool | None = None,
    echo=print,
    precision: str = "fp32",
    fast_decode: bool = False,
    label_key: str | None = None,
    split_key: str | None = None,
    views: int = 0,
    augment: str = "tutorial",
    backbone: str | Backbone = "resnet18",
    layer: str | None = None,
    allow_slow: bool = False,
) -> EmbedResult:
    """Embed every image under ``data_root`` that ``out`` does not hold yet; see module docs.

    ``data_root`` may also be tar shards (a brace pattern or a folder of .tar files; tlkit/data/shards.py):
    labels from KEY.cls or the JSON field ``label_key``, the split from the shard's name or ``split_key``.

    ``fast_decode``: large JPEGs decoded at a reduced DCT scale (:attr:`TransformSpec.jpeg_draft`).
    ``views`` K > 0: also K views of every training image by augmentation ``augment``
    (:class:`tlkit.data.views.ViewSpec`), stored in ``/<split>/views``.
    ``backbone``/``layer``: tlkit.embed.backbones (default: resnet18's penultimate features).
    ``allow_slow``: run a precision measured several times slower than fp32 on this CPU (else refused).
    """
    start = time.perf_counter()
    data_root, out = Path(data_root), Path(out)
    check_output_path(out)
    index = discover_source(data_root, label_key, split_key)
    for name in index.ignored:
        echo(f"note: ignored {name}")
    precision, device = precisions.Precision.parse(precision), precisions.device_for(precision, device)
    torch_device = select_device(device)
    precision.check_device(torch_device)  # a bad --device or --precision fails now, before the weights load
    # Never silently slower: the precision's cost on this CPU, said (or refused) before any work.
    speed_note = precisions.check_speed(precision, torch_device, allow_slow)
    if speed_note:
        echo(speed_note)
    distribute = get_distributor(backend)
    backbone = backbone if isinstance(backbone, Backbone) else Backbone.parse(backbone, layer)
    backbone.features()  # an unknown layer fails now, with the closest names
    chosen = weights if isinstance(weights, Weights) else Weights.parse(weights, seed, backbone=backbone.name)
    chosen = chosen.at_precision(precision.name)  # named weights at int8: their published quantized variant
    loaded = chosen.load(backbone=backbone.name)
    # int8 from fp32 tensors (random, file) is calibrated: once per cache, then read back from it
    calibrated = precision.name == "int8" and not precisions.is_quantized_state_dict(loaded.state_dict)
    spec = chosen.transform_for(backbone.name)
    spec = replace(spec, jpeg_draft=True) if fast_decode else spec
    view_spec = _view_spec(views, augment, spec)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = EmbedResult(out=out)

    with CacheLock(out):
        remove_stale_tmp(out)
        parts_dir = parts_dir_of(out)
        ours = make_provenance(loaded.id, loaded.sha256, spec, data_root, now, precision.provenance_attrs(), view_spec,
                               backbone)

        cached_paths: set[str] = set()
        cached_classes: list[str] = []
        created = None
        if out.exists():
            with open_h5(out, check_digest=False) as f:
                theirs = Provenance.from_attrs(f.attrs)
                ours = _adopt_calibration(ours, theirs)
                _refuse_mix(str(out), theirs, ours)  # "another feature space" says more than "altered"
                check_content_digest(f, out)  # never carry damaged class names into the new version
                created = theirs.created
                cached_classes = class_names_of(f)
                for split in split_names(f):
                    cached_paths.update(read_paths(f[split]).tolist())
        interrupted = _manifest_provenance(parts_dir)
        if interrupted is not None:
            ours = _adopt_calibration(ours, interrupted)
        parts, parts_created = _read_parts(parts_dir, interrupted, ours)
        created = created or parts_created or now
        ours = replace(ours, created=created)
        class_names = sorted(set(cached_classes) | set(index.class_names))
        label_of = {name: i for i, name in enumerate(class_names)}

        pending = [
            WorkItem(file=index.source(it.path), path=it.path, split=it.split, label=label_of[it.class_name])
            for it in index.items
            if it.path not in cached_paths and it.path not in parts.done
        ]
        result.already_cached = len(index.items) - len(pending)
        if not pending and not parts.files:
            result.up_to_date = True
            result.seconds = time.perf_counter() - start
            with open_h5(out) as f:
                result.skipped = read_skipped(f)
            return result

        if strict and pending:
            bad = check_files([(it.file, it.path) for it in pending], workers, max_pixels)
            bad += [(path, why) for path, _, why in index.unreadable]
            if bad:
                lines = "; ".join(f"{p}: {why}" for p, why in bad[:5])
                more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
                raise DataError(f"--strict: {len(bad)} unreadable image(s), nothing written: {lines}{more}")

        if calibrated and not ours.int8_calibration:
            # The first run into this cache: calibrate now, before the manifest records it, so an
            # interrupted run resumes with these numbers, and the published cache keeps them.
            calibration = precisions.calibrate_on_images(loaded.state_dict, index.source, index.items, spec, max_pixels,
                                                         backbone)
            ours = replace(ours, **precision.provenance_attrs(calibration))
        calibration = precisions.Int8Calibration.from_json(ours.int8_calibration) if ours.int8_calibration else None

        # The manifest says what the parts belong to and how many images this run covers
        # (`tlkit info` shows the progress); the folder and the file appear whole or not at all.
        with storage_errors(parts_dir, f"write the part files of {out}"):
            start_parts(out, {"provenance": ours.to_attrs(), "to_embed": len(pending) + len(parts.done), "started": now})
        if pending:
            echo(
                f"embedding {len(pending)} images ({result.already_cached} already cached) with "
                + ("" if backbone.is_legacy else f"{backbone.name} {ours.layer} ({ours.feature_dim}-d, {ours.pooling} pooling), ")
                + f"{loaded.id} on {torch_device}, backend {backend}"
                + (f", precision {precision}" if precision.name != "fp32" else "")
                + (f", {view_spec.describe()}" if view_spec else "")
            )
            job = EmbedJob(
                state_dict=loaded.state_dict, spec=spec, parts_dir=parts_dir, class_names=class_names,
                batch_size=batch_size, workers=workers, device=device, max_pixels=max_pixels,
                rows_per_part=rows_per_part, ray=ray or RayOptions(),
                precision=precision.name, calibration=calibration, views=view_spec, backbone=backbone,
            )
            with tqdm(total=len(pending), unit="img", desc="embed", disable=None if progress is None else not progress) as bar:
                try:
                    with storage_errors(parts_dir, f"write the part files of {out}"):
                        stats = distribute(job, pending, bar.update)
                except BaseException:
                    if not part_files(parts_dir):  # nothing finished: leave no "unfinished" trace
                        discard_parts(out)
                    raise
            result.embedded = stats.embedded
            parts = scan_parts(parts_dir)  # under our own manifest now: nothing to refuse

        sources = ([out] if out.exists() else []) + parts.files
        attrs = ours.to_attrs() | {"updated": now}
        result.skipped = sorted(set(parts.skipped) | set(index.unreadable))  # unreadable: a truncated tar's tail
        assemble(out, sources, class_names, attrs, skipped=result.skipped, purpose=f"publish {out}")
        discard_parts(out)
    result.seconds = time.perf_counter() - start
    return result
