"""Combine caches of one feature space into one (``tlkit merge OUT IN...``).

Built on :func:`tlkit.cache.assemble.assemble`: rows are de-duplicated by
path (the first input listing a path wins), sorted, and their labels
remapped by class name to the union of the inputs' classes. The output's
``merged_from`` attribute records each input and its label map.

Safety: inputs must share the feature space (backbone, layer, weights,
transform, dimension, precision and int8 calibration) -- otherwise nothing is written and the message names
the field that differs. OUT is locked like an embed, written under a
temporary name and renamed into place, so a killed merge leaves OUT as it
was (absent, or the previous file) plus a temporary file that the next run
removes; rerunning the command then does the whole merge again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py

from tlkit.atomic import remove_stale_tmp
from tlkit.cache.assemble import assemble
from tlkit.cache.lock import CacheLock
from tlkit.cache.reader import H5_LOCKING, class_names_of, open_h5, read_skipped, reporting_damage, split_names
from tlkit.cache.schema import FORMAT, Provenance
from tlkit.errors import CacheError


@dataclass
class _Input:
    path: Path
    provenance: Provenance
    class_names: list[str]
    rows: dict[str, int]
    skipped: list[tuple[str, str, str]]
    stat: os.stat_result

    def fingerprint(self) -> dict:
        return {"path": str(self.path.resolve()), "size": self.stat.st_size, "mtime_ns": self.stat.st_mtime_ns}


@dataclass
class MergeResult:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    input_rows: int = 0
    class_names: list[str] = field(default_factory=list)
    remapped: bool = False
    up_to_date: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.input_rows - sum(self.counts.values())

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.out} is up to date: it was merged from these inputs and none changed since"
        rows = ", ".join(f"{s} {n}" for s, n in self.counts.items())
        remap = f"; labels remapped to the union of classes: {', '.join(self.class_names)}" if self.remapped else ""
        return f"merged {self.input_rows} rows into {self.out} ({rows}; {self.duplicates} duplicate paths dropped){remap}"


def _read_input(path: Path) -> _Input:
    with open_h5(path) as f, reporting_damage(path):
        try:
            provenance = Provenance.from_attrs(f.attrs)
        except KeyError as exc:
            raise CacheError(f"{path} lacks the provenance attribute {exc}") from None
        return _Input(
            path=path, provenance=provenance, class_names=class_names_of(f),
            rows={s: len(f[s]["labels"]) for s in split_names(f)}, skipped=read_skipped(f), stat=os.stat(path),
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_out(out: Path, inputs: list[_Input], overwrite: bool) -> bool:
    """Whether OUT already holds exactly this merge; refuse what must not be overwritten."""
    if out.is_dir():
        raise CacheError(f"output {out} is a folder; give a file path such as {out}/merged.h5")
    if not out.exists() or any(_same_file(out, i.path) for i in inputs):
        return False
    if not h5py.is_hdf5(out):
        raise CacheError(f"output {out} exists and is not an HDF5 file; refusing to overwrite it")
    try:
        with h5py.File(out, "r", locking=H5_LOCKING) as f:
            fmt, record = f.attrs.get("format"), f.attrs.get("merged_from")
    except OSError as exc:
        raise CacheError(f"output {out} exists but cannot be read as HDF5 ({exc}); refusing to overwrite it") from None
    if fmt != FORMAT:
        raise CacheError(f"output {out} is an HDF5 file but not a tlkit cache; refusing to overwrite it")
    if record is not None:
        try:
            previous = [{k: src.get(k) for k in ("path", "size", "mtime_ns")} for src in json.loads(record)]
        except (ValueError, TypeError, AttributeError):
            previous = None
        if previous == [i.fingerprint() for i in inputs]:
            return True
    if not overwrite:
        raise CacheError(
            f"output {out} already exists and is not a result of merging these inputs as they are now; "
            f"list it among the inputs to add to it, or pass --overwrite to replace it"
        )
    return False


def _check_feature_space(inputs: list[_Input]) -> list[str]:
    """Refuse inputs of different feature spaces; return notes about harmless differences."""
    first = inputs[0]
    for other in inputs[1:]:
        diff = other.provenance.feature_space_mismatch(first.provenance)
        if diff:
            raise CacheError(
                f"{other.path} is not in the feature space of {first.path} ({'; '.join(diff)}, "
                f"values of {first.path.name} vs {other.path.name}); caches of different feature spaces never merge"
            )
    notes = []
    for name in ("torch_version", "torchvision_version", "data_root"):
        values = sorted({getattr(i.provenance, name) for i in inputs})
        if len(values) > 1:
            notes.append(f"inputs differ in {name} ({', '.join(values)}); the output records {getattr(first.provenance, name)}"
                         + ("; rows are identified by their path relative to the data root" if name == "data_root" else ""))
    return notes


def merge(
    out: str | Path,
    inputs: Sequence[str | Path],
    overwrite: bool = False,
    on_rows: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> MergeResult:
    """Merge the caches ``inputs`` into ``out``; see the module docs.

    ``on_start(total_input_rows)`` and ``on_rows(n)`` report progress.
    """
    out = Path(out)
    if not inputs:
        raise CacheError("give at least one input cache: tlkit merge OUT IN [IN...]")
    paths: list[Path] = []
    for p in map(Path, inputs):
        if not any(_same_file(p, q) for q in paths):  # the same file twice adds nothing
            paths.append(p)
    result = MergeResult(out=out)
    with CacheLock(out):
        remove_stale_tmp(out)
        listed = [_read_input(p) for p in paths]
        result.notes = _check_feature_space(listed)
        if _check_out(out, listed, overwrite):
            result.up_to_date = True
            with open_h5(out) as f:
                result.counts = {s: len(f[s]["labels"]) for s in split_names(f)}
            result.input_rows = sum(result.counts.values())
            return result

        lists = {tuple(i.class_names) for i in listed}
        class_names = list(listed[0].class_names) if len(lists) == 1 else sorted({n for i in listed for n in i.class_names})
        label_of = {n: k for k, n in enumerate(class_names)}
        result.class_names = class_names
        result.remapped = any(i.class_names != class_names for i in listed)
        result.input_rows = sum(sum(i.rows.values()) for i in listed)

        first = listed[0].provenance
        provenance = Provenance(**{**first.to_attrs(), "created": min(i.provenance.created for i in listed)})
        record = [
            {**i.fingerprint(), "rows": i.rows, "class_names": i.class_names,
             "label_map": [label_of[n] for n in i.class_names], "weights_id": i.provenance.weights_id,
             "created": i.provenance.created, "data_root": i.provenance.data_root,
             "torch_version": i.provenance.torch_version, "torchvision_version": i.provenance.torchvision_version}
            for i in listed
        ]
        seen: set[str] = set()
        skipped = []
        for entry in (e for i in listed for e in i.skipped):
            if entry[0] not in seen:
                seen.add(entry[0])
                skipped.append(entry)
        attrs = provenance.to_attrs() | {
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "merged_from": json.dumps(record),
        }
        if on_start:
            on_start(result.input_rows)
        try:
            result.counts = assemble(out, [i.path for i in listed], class_names, attrs, skipped=skipped, on_rows=on_rows,
                                     purpose=f"merge into {out}")
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # disk full, permissions...: the CLI reports these as they are
            raise CacheError(f"merge failed reading the inputs ({exc}); check them with `tlkit verify`") from None
    return result
