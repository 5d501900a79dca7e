"""``tlkit verify --data``: re-embed a sample of a cache's images and compare with the stored features.

The integrity checks need only the file and live with the cache
(:mod:`tlkit.cache.verify`); this check needs the backbone, so it lives on the
embed side and runs as the ``reproduce`` step of
:func:`tlkit.cache.verify.verify_cache`. It catches a cache made with other
weights, with a torch/torchvision whose numerics or initialisation changed,
or from images that have been edited since.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
import torchvision

from tlkit.cache.reader import H5_DAMAGE, one_line
from tlkit.cache.schema import Provenance
from tlkit.cache.verify import VerifyReport, verify_cache
from tlkit.data.decode import DEFAULT_MAX_PIXELS
from tlkit.data.reader import read_batches
from tlkit.data.shards import locate_members, looks_like_shards
from tlkit.data.transforms import TransformSpec
from tlkit.data.views import ViewSpec
from tlkit.device import select_device
from tlkit.embed import precision as precisions
from tlkit.embed.mapper import FeatureMapper
from tlkit.embed.recorded import recorded_backbone, recorded_precision, recorded_weights
from tlkit.errors import TlkitError

# The default tolerance is the recorded precision's (Precision.verify_tolerance, reasons in
# tlkit/embed/precision.py): 1e-4 for fp32 and int8, 1e-2 for bf16/fp16. For fp32: re-embedding
# on the same kind of hardware reproduces features to ~1e-6 (only the order of float32 sums
# changes), while anything real -- other weights, an edited or re-encoded image, another
# resize -- moves features by 1e-2 or more.
DEFAULT_TOLERANCE = None  # None: the recorded precision's
DEFAULT_SAMPLE = 32


def verify_with_data(
    path: str | Path,
    data_dir: str | Path,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    weights: str | Path | None = None,
    tolerance: float | None = DEFAULT_TOLERANCE,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool | None = None,
) -> VerifyReport:
    """Every check of ``tlkit verify --data``: the cache's integrity, then ``sample`` images re-embedded.

    ``weights`` is a state_dict file to re-embed with (needed when the cache was made from one);
    by default the weights the cache records. The network is rebuilt at the recorded precision
    (and, for int8, from the recorded calibration); ``tolerance`` None means that precision's.
    """
    def reproduce(f, paths_by_split, provenance, report) -> None:
        if sample > 0:
            check_sample(f, Path(data_dir), paths_by_split, provenance, report, sample, seed, weights, tolerance,
                         device, batch_size)

    return verify_cache(path, progress=progress, reproduce=reproduce)


def _sources(data: Path, rels: list[str], shards: bool) -> tuple[dict, list[str]]:
    """What to decode for each cache path, and a problem line for each one not there: a file of the
    folder ``data``, or, for tar shards (paths ``SHARD/KEY``), a member of one of them."""
    if shards:
        return locate_members(data, rels)
    found, missing = {}, []
    for rel in rels:
        file = data / rel
        if file.is_file():
            found[rel] = str(file)
        else:
            missing.append(f"{rel}: missing from {data} (cannot re-embed it)")
    return found, missing


def check_sample(
    f: h5py.File, data_dir: Path, paths_by_split: dict[str, np.ndarray], provenance: Provenance,
    report: VerifyReport, sample: int, seed: int, weights, tolerance: float | None, device: str, batch_size: int,
) -> None:
    """Re-embed a seeded random sample of rows and compare with the stored features."""
    try:
        precision, calibration = recorded_precision(provenance)
        precision.check_device(select_device(precisions.device_for(precision, device)))
        backbone = recorded_backbone(provenance)
    except TlkitError as exc:
        report.problems.append(f"cannot rebuild the recorded network: {exc}")
        return
    if tolerance is None:
        tolerance = precision.verify_tolerance
    shards = looks_like_shards(data_dir)
    if not shards and not data_dir.is_dir():
        report.problems.append(f"data folder {data_dir} does not exist")
        return
    try:
        loaded = recorded_weights(provenance, weights)
    except TlkitError as exc:
        report.problems.append(str(exc))
        return
    try:
        spec = TransformSpec.from_json(provenance.transform)
    except (ValueError, TypeError, KeyError) as exc:
        report.problems.append(f"the recorded transform cannot be rebuilt ({one_line(exc)}): {provenance.transform}")
        return
    try:
        views = ViewSpec.from_json(provenance.views)
    except (ValueError, TypeError, KeyError) as exc:
        report.problems.append(f"the recorded views cannot be rebuilt ({one_line(exc)}): {provenance.views}")
        return
    for name, then, now in (("torch", provenance.torch_version, str(torch.__version__)),
                            ("torchvision", provenance.torchvision_version, str(torchvision.__version__))):
        if then != now:
            report.notes.append(f"the cache was made with {name} {then}; this is {name} {now}")

    splits = list(paths_by_split)
    ends = np.cumsum([len(paths_by_split[s]) for s in splits])  # rows numbered across splits, in order
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        report.notes.append("no rows to re-embed")
        return
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(total, size=min(sample, total), replace=False))
    rows = []
    for i in picked.tolist():
        k = int(np.searchsorted(ends, i, side="right"))
        split, r = splits[k], i - (int(ends[k - 1]) if k else 0)
        rows.append((split, r, str(paths_by_split[split][r])))
    try:
        sources, missing = _sources(data_dir, [rel for _, _, rel in rows], shards)
    except TlkitError as exc:  # e.g. a shard pattern matching no file
        report.problems.append(f"cannot re-embed from {data_dir}: {exc}")
        return
    report.problems.extend(missing)
    todo = [(split, r, rel, sources[rel]) for split, r, rel in rows if rel in sources]
    if not todo:
        return

    try:
        mapper = FeatureMapper(loaded.state_dict, select_device(precisions.device_for(precision, device)), precision, calibration,
                               backbone)
    except TlkitError as exc:
        report.problems.append(f"cannot rebuild the recorded network: {exc}")
        return
    worst = 0.0
    compared = views_compared = 0
    files = [t[3] for t in todo]
    view_keys = [rel if split in provenance.view_splits else None for split, _, rel, _ in todo] if views else None
    for batch in read_batches(files, spec, batch_size, workers=0, max_pixels=DEFAULT_MAX_PIXELS, device=mapper.device,
                              views=views, view_keys=view_keys):
        for i, reason in batch.errors:
            report.problems.append(f"{todo[i][2]}: cannot be decoded now ({reason}), but it was embedded")
        if not batch.indices:
            continue
        fresh, fresh_views = batch.views_of(mapper(batch.images))
        for row, i in enumerate(batch.indices):
            split, r, rel, _ = todo[i]
            try:
                stored = f[split]["features"][r]
                stored_views = f[split]["views"][r] if fresh_views[row] is not None else None
            except H5_DAMAGE:
                continue  # already reported by the integrity scan
            diff = float(np.max(np.abs(fresh[row].astype(np.float64) - stored)))
            worst = max(worst, diff)
            compared += 1
            if not diff <= tolerance:
                report.problems.append(
                    f"{rel}: stored features differ from a fresh embedding (max abs diff {diff:.3g} > tolerance {tolerance:g})"
                )
            if stored_views is not None:
                per_view = np.abs(fresh_views[row].astype(np.float64) - stored_views).max(axis=1)
                worst = max(worst, float(per_view.max()))
                views_compared += len(per_view)
                bad = np.flatnonzero(~(per_view <= tolerance))
                if len(bad):
                    report.problems.append(
                        f"{rel}: stored view(s) {bad.tolist()} differ from fresh ones (max abs diff "
                        f"{per_view.max():.3g} > tolerance {tolerance:g}): not the views the seeds give"
                    )
    if compared and worst <= tolerance:
        report.passed.append(
            f"re-embedded {compared} sampled image(s) from {data_dir} with {loaded.id} at {precision}"
            + (f", and {views_compared} of their views" if views_compared else "")
            + f": max abs diff {worst:.2g} <= tolerance {tolerance:g}"
        )
