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

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import torch
import torchvision
from tqdm.auto import tqdm

import tlkit
from tlkit.atomic import storage_errors
from tlkit.cache.assemble import assemble
from tlkit.cache.lock import CacheLock
from tlkit.cache.reader import (
    H5_LOCKING,
    PARTS_MANIFEST,
    check_content_digest,
    class_names_of,
    open_h5,
    parts_dir_of,
    read_paths,
    read_skipped,
    split_names,
)
from tlkit.cache.schema import FEATURE_DIM, FORMAT, PART_FORMAT, Provenance
from tlkit.cache.writer import atomic_write_text, discard_dir, remove_stale_tmp
from tlkit.data.decode import DEFAULT_MAX_PIXELS
from tlkit.data.discovery import discover
from tlkit.data.transforms import TransformSpec
from tlkit.embed.backbone import BACKBONE, LAYER, select_device
from tlkit.embed.distributor import EmbedJob, get_distributor
from tlkit.embed.reader import check_files
from tlkit.embed.runner import WorkItem
from tlkit.embed.weights import resolve_weights
from tlkit.errors import CacheError, DataError

MANIFEST = PARTS_MANIFEST


@dataclass
class EmbedResult:
    out: Path
    embedded: int = 0
    already_cached: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, split, reason)
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
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


def make_provenance(weights_id: str, weights_sha256: str, spec: TransformSpec, data_root: Path, created: str) -> Provenance:
    return Provenance(
        backbone=BACKBONE,
        layer=LAYER,
        weights_id=weights_id,
        weights_sha256=weights_sha256,
        transform=spec.to_json(),
        feature_dim=FEATURE_DIM,
        tlkit_version=tlkit.__version__,
        torch_version=str(torch.__version__),
        torchvision_version=str(torchvision.__version__),
        created=created,
        data_root=str(data_root.resolve()),
    )


def _refuse_mix(where: str, theirs: Provenance, ours: Provenance) -> None:
    diff = theirs.feature_space_mismatch(ours)
    if diff:
        raise CacheError(
            f"{where} holds features of another feature space ({'; '.join(diff)}); feature spaces never mix: "
            f"embed into a new file, or rerun with the weights and transform it was made with"
        )


def _read_parts(parts_dir: Path, ours: Provenance) -> tuple[list[Path], set[str], list[tuple[str, str, str]], str | None]:
    """Finished parts of an interrupted run: (files, done paths, skipped entries, created)."""
    manifest_file = parts_dir / MANIFEST
    if not manifest_file.exists():
        return [], set(), [], None
    try:
        manifest = json.loads(manifest_file.read_text())
        theirs = Provenance(**manifest["provenance"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{manifest_file} is damaged ({exc}); delete {parts_dir} to start over") from None
    _refuse_mix(f"the interrupted run in {parts_dir}", theirs, ours)
    files, done, skipped = [], set(), []
    for part in sorted(parts_dir.glob("*.h5")):
        try:
            with h5py.File(part, "r", locking=H5_LOCKING) as f:
                if f.attrs.get("format") != PART_FORMAT:
                    continue
                for split in split_names(f):
                    done.update(read_paths(f[split]).tolist())
                for entry in read_skipped(f):
                    skipped.append(entry)
                    done.add(entry[0])
        except OSError as exc:
            raise CacheError(f"part file {part} is damaged ({exc}); delete it and rerun to embed its images again") from None
        files.append(part)
    return files, done, skipped, theirs.created


def _start_parts(parts_dir: Path, out: Path, manifest: str) -> None:
    """Create ``parts_dir`` with its manifest in one step, or rewrite the manifest of an existing one."""
    if parts_dir.is_dir():
        atomic_write_text(parts_dir / MANIFEST, manifest)
        return
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}-parts")  # removed by remove_stale_tmp if we die here
    staging.mkdir()
    try:
        atomic_write_text(staging / MANIFEST, manifest)
        os.replace(staging, parts_dir)
    except BaseException:  # a full disk: leave nothing behind
        shutil.rmtree(staging, ignore_errors=True)
        raise


def embed(
    data_root: str | Path,
    out: str | Path,
    weights: str = "imagenet",
    seed: int = 0,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    strict: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    backend: str = "local",
    rows_per_part: int = 2048,
    backend_options: dict | None = None,
    progress: bool | None = None,
    echo=print,
) -> EmbedResult:
    """Embed every image under ``data_root`` that ``out`` does not hold yet; see module docs."""
    start = time.perf_counter()
    data_root, out = Path(data_root), Path(out)
    check_output_path(out)
    index = discover(data_root)
    select_device(device)  # a bad --device fails now, before the weights load
    distribute = get_distributor(backend)
    loaded = resolve_weights(weights, seed)
    spec = TransformSpec()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = EmbedResult(out=out)

    with CacheLock(out):
        remove_stale_tmp(out)
        parts_dir = parts_dir_of(out)
        ours = make_provenance(loaded.id, loaded.sha256, spec, data_root, now)

        cached_paths: set[str] = set()
        cached_classes: list[str] = []
        created = None
        if out.exists():
            with open_h5(out, check_digest=False) as f:
                theirs = Provenance.from_attrs(f.attrs)
                _refuse_mix(str(out), theirs, ours)  # "another feature space" says more than "altered"
                check_content_digest(f, out)  # never carry damaged class names into the new version
                created = theirs.created
                cached_classes = class_names_of(f)
                for split in split_names(f):
                    cached_paths.update(read_paths(f[split]).tolist())
        part_files, part_done, part_skipped, parts_created = _read_parts(parts_dir, ours)
        created = created or parts_created or now
        ours = make_provenance(loaded.id, loaded.sha256, spec, data_root, created)
        class_names = sorted(set(cached_classes) | set(index.class_names))
        label_of = {name: i for i, name in enumerate(class_names)}

        pending = [
            WorkItem(file=str(data_root / it.path), path=it.path, split=it.split, label=label_of[it.class_name])
            for it in index.items
            if it.path not in cached_paths and it.path not in part_done
        ]
        result.already_cached = len(index.items) - len(pending)
        if not pending and not part_files:
            result.up_to_date = True
            result.seconds = time.perf_counter() - start
            with open_h5(out) as f:
                result.skipped = read_skipped(f)
                result.counts = {s: len(f[s]["labels"]) for s in split_names(f)}
            return result

        if strict and pending:
            bad = check_files([(it.file, it.path) for it in pending], workers, max_pixels)
            if bad:
                lines = "; ".join(f"{p}: {why}" for p, why in bad[:5])
                more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
                raise DataError(f"--strict: {len(bad)} unreadable image(s), nothing written: {lines}{more}")

        # The manifest says what the parts belong to and how many images this run covers
        # (`tlkit info` shows the progress); the folder and the file appear whole or not at all.
        manifest = json.dumps(
            {"provenance": ours.to_attrs(), "to_embed": len(pending) + len(part_done), "started": now}, indent=1
        )
        with storage_errors(parts_dir, f"write the part files of {out}"):
            _start_parts(parts_dir, out, manifest)
        if pending:
            echo(
                f"embedding {len(pending)} images ({result.already_cached} already cached) with "
                f"{loaded.id} on {select_device(device)}, backend {backend}"
            )
            job = EmbedJob(
                state_dict=loaded.state_dict, spec=spec, parts_dir=parts_dir, class_names=class_names,
                batch_size=batch_size, workers=workers, device=device, max_pixels=max_pixels,
                rows_per_part=rows_per_part, options=backend_options or {},
            )
            with tqdm(total=len(pending), unit="img", desc="embed", disable=None if progress is None else not progress) as bar:
                try:
                    with storage_errors(parts_dir, f"write the part files of {out}"):
                        stats = distribute(job, pending, bar.update)
                except BaseException:
                    if not any(parts_dir.glob("*.h5")):  # nothing finished: leave no "unfinished" trace
                        discard_dir(parts_dir, out)
                    raise
            result.embedded = stats.embedded
            part_files, _, part_skipped, _ = _read_parts(parts_dir, ours)

        sources = ([out] if out.exists() else []) + part_files
        attrs = ours.to_attrs() | {"updated": now}
        result.counts = assemble(out, sources, class_names, attrs, skipped=sorted(set(part_skipped)),
                                 purpose=f"publish {out}")
        result.skipped = sorted(set(part_skipped))
        discard_dir(parts_dir, out)
    result.seconds = time.perf_counter() - start
    return result
