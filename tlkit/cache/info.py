"""What is inside a cache, and how far an embed into it has got (``tlkit info``).

Reads only metadata and the labels (8 bytes a row), never the features, so
it answers in well under a second for millions of rows. Safe while an embed
is running: the published file is never modified in place, part files
appear whole (atomic renames), and the writer's lock is looked up, not taken.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from tlkit.cache.lock import lock_holder
from tlkit.cache.parts import parts_dir_of, read_manifest, scan_parts
from tlkit.cache.reader import class_names_of, one_line, open_h5, read_skipped, reporting_damage, split_names
from tlkit.cache.schema import VIEWS_DATASET, Provenance
from tlkit.errors import CacheError

MAX_CLASS_ROWS = 30  # classes listed one per line in the text report before it abbreviates


def cache_info(path: str | Path) -> dict:
    """Everything ``tlkit info`` shows, as plain JSON-ready data."""
    path = Path(path)
    for _ in range(3):  # an embed may publish (and drop its parts) while we look: look again
        parts_dir = parts_dir_of(path)
        had_parts = parts_dir.is_dir()
        writer = lock_holder(path)
        if not path.exists() and not had_parts:
            if writer is None:
                open_h5(path)  # raises the usual "does not exist" error
            return {"path": str(path), "finished_cache": False, "writer_pid": writer, "in_progress": None,
                    "state": f"unfinished: pid {writer} is starting to write it, nothing is finished yet"}
        info: dict = {"path": str(path), "finished_cache": path.exists()}
        if path.exists():
            with open_h5(path) as f, reporting_damage(path):
                info.update(_describe(f))
            info["size_bytes"] = path.stat().st_size
        info["writer_pid"] = writer
        info["in_progress"] = _progress(parts_dir) if had_parts else None
        if had_parts and not parts_dir.is_dir():
            continue
        info["state"] = _state(info, writer)
        return info
    raise CacheError(f"{path} keeps changing under us (an embed publishing right now?); try again")


def _state(info: dict, writer: int | None) -> str:
    if info["in_progress"] is None:
        return "finished" if writer is None else f"finished; pid {writer} is writing a new version"
    how = f"embed running (pid {writer})" if writer else "embed interrupted (rerun the same `tlkit embed` to finish it)"
    return f"finished, with new images in progress: {how}" if info["finished_cache"] else f"unfinished: {how}"


def _calibration_summary(text: str) -> str:
    """One line for a stored int8 calibration (tlkit.embed.precision.Int8Calibration.to_json)."""
    if not text:
        return "(none)"
    try:
        raw = json.loads(text)
        return f"{len(raw['scales'])} activation scales, {raw['engine']} backend, measured on {raw['sample'].split(':', 1)[0]}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"unreadable ({len(text)} characters)"


def _describe(f: h5py.File) -> dict:
    class_names = class_names_of(f)
    try:
        provenance = Provenance.from_attrs(f.attrs).as_dict()
    except KeyError as exc:
        raise CacheError(f"{f.filename} lacks the provenance attribute {exc}") from None
    splits = {}
    for split in split_names(f):
        g = f[split]
        feats = g["features"]
        labels = g["labels"][...]  # checksummed: a damaged labels chunk fails here
        valid = (labels >= 0) & (labels < len(class_names))
        counts = np.bincount(labels[valid], minlength=len(class_names))
        splits[split] = {
            "rows": int(len(labels)),
            "per_class": {name: int(n) for name, n in zip(class_names, counts)},
            "labels_out_of_range": int((~valid).sum()),
            "features": {
                "shape": list(feats.shape),
                "dtype": str(feats.dtype),
                "chunks": list(feats.chunks) if feats.chunks else None,
                "fletcher32": bool(feats.fletcher32),
                "compression": feats.compression,
            },
        }
        if VIEWS_DATASET in g:
            views = g[VIEWS_DATASET]
            splits[split]["views"] = {"shape": list(views.shape), "chunks": list(views.chunks or ()),
                                      "fletcher32": bool(views.fletcher32)}
    merged_from = f.attrs.get("merged_from")
    return {
        "complete": bool(f.attrs.get("complete", False)),
        "schema_version": int(f.attrs.get("schema_version", -1)),
        "updated": str(f.attrs.get("updated", provenance.get("created", ""))),
        "class_names": class_names,
        "splits": splits,
        "skipped": [{"path": p, "split": s, "reason": r} for p, s, r in read_skipped(f)],
        "provenance": provenance,
        "merged_from": json.loads(merged_from) if merged_from is not None else None,
    }


def _progress(parts_dir: Path) -> dict:
    """How far the embed whose finished work is in ``parts_dir`` has got."""
    out: dict = {"parts_dir": str(parts_dir), "parts": 0, "rows": 0, "rows_per_split": {}, "skipped": 0,
                 "to_embed": None, "started": None, "weights_id": None, "precision": None, "backbone": None,
                 "damaged_parts": []}
    try:
        manifest = read_manifest(parts_dir)
        if manifest is not None:
            out["to_embed"] = manifest.get("to_embed")
            out["started"] = manifest.get("started")
            recorded = Provenance.from_attrs(manifest.get("provenance", {}), lenient=True)
            out["weights_id"] = recorded.weights_id or None
            out["precision"] = recorded.precision
            out["backbone"] = recorded.describe()
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError) as exc:
        out["manifest_error"] = one_line(exc)
    scan = scan_parts(parts_dir, with_paths=False, keep_going=True)  # counts only: fast for any size
    out.update(parts=len(scan.files), rows=scan.rows, rows_per_split=scan.rows_per_split, skipped=len(scan.skipped),
               damaged_parts=scan.damaged)
    return out


def format_info(info: dict, all_classes: bool = False) -> str:
    """The human-readable report of :func:`cache_info`."""
    lines = [f"cache       {info['path']}"]
    lines.append(f"state       {info['state']}")
    if info["finished_cache"]:
        lines.append(f"size        {_size(info['size_bytes'])}   updated {info['updated']}")
        names = info["class_names"]
        lines.append(f"classes     {len(names)}: {', '.join(names[:MAX_CLASS_ROWS])}{' ...' if len(names) > MAX_CLASS_ROWS else ''}")
        splits = info["splits"]
        if splits:
            first = next(iter(splits.values()))["features"]
            checks = "fletcher32 checksums" if first["fletcher32"] else "NO checksums"
            comp = f", {first['compression']}" if first["compression"] else ""
            lines.append(f"features    {first['dtype']} (rows, {first['shape'][1]}), chunks {tuple(first['chunks'] or ())}, {checks}{comp}")
            lines.extend(_views_lines(info))
            lines.append("")
            lines.extend(_class_table(names, splits, all_classes))
        skipped = info["skipped"]
        lines.append("")
        lines.append(f"skipped     {len(skipped)} file(s) that could not be decoded" + (":" if skipped else ""))
        lines.extend(f"  {e['path']}: {e['reason']}" for e in skipped)
        lines.append("")
        lines.append("provenance")
        for key, value in info["provenance"].items():
            shown = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
            if key == "int8_calibration":  # a few KiB of scales: --json has them whole
                shown = _calibration_summary(value)
            if key == "views":  # the settings; --json has the whole record
                shown = f"--views {value['k']} --augment {value['augment']}: {json.dumps(value['params'], sort_keys=True)}"
            lines.append(f"  {key:<20}{shown}")
        if info["merged_from"]:
            lines.append("")
            lines.append(f"merged from {len(info['merged_from'])} caches")
            for src in info["merged_from"]:
                remap = ", ".join(f"{n}->{i}" for n, i in zip(src["class_names"], src["label_map"]))
                lines.append(f"  {src['path']}: {sum(src['rows'].values())} rows, labels {remap}")
    progress = info["in_progress"]
    if progress is not None:
        lines.append("")
        lines.append(f"in progress {progress['parts_dir']}/")
        done = progress["rows"] + progress["skipped"]
        total = progress["to_embed"]
        how_far = f"{done} of {total} images ({100 * done / total:.0f}%)" if total else f"{done} images"
        per_split = ", ".join(f"{s} {n}" for s, n in progress["rows_per_split"].items())
        skipped = f", {progress['skipped']} skipped" if progress["skipped"] else ""
        per_split = f": {per_split}" if per_split else ""
        lines.append(f"  done      {how_far} in {progress['parts']} part file(s){per_split}{skipped}")
        if progress["started"]:
            lines.append(f"  started   {progress['started']} with {progress['weights_id']} at {progress['precision']}")
        if progress.get("manifest_error"):
            lines.append(f"  manifest  unreadable: {progress['manifest_error']}")
        lines.extend(f"  damaged   {d}" for d in progress["damaged_parts"])
        if not info["finished_cache"]:
            lines.append("  readers see no cache until the embed finishes (it appears whole, by an atomic rename)")
        else:
            lines.append("  readers see the finished cache above until the new one replaces it whole")
    return "\n".join(lines)


def _views_lines(info: dict) -> list[str]:
    """The views line of the text report: what ``--views`` stored, per split."""
    record = info["provenance"].get("views")
    if not record:
        return []
    held = ", ".join(f"{s} {tuple(v['views']['shape'])}" for s, v in info["splits"].items() if "views" in v)
    return [f"views       {record['k']} {record['augment']} view(s) per training image, float32: {held or 'no training split'}"]


def _class_table(names: list[str], splits: dict, all_classes: bool) -> list[str]:
    split_list = list(splits)
    width = max([len(n) for n in names] + [5])
    head = f"{'class':<{width}}" + "".join(f"{s:>10}" for s in split_list)
    rows = [head]
    shown = names if all_classes or len(names) <= MAX_CLASS_ROWS else names[:MAX_CLASS_ROWS]
    for name in shown:
        rows.append(f"{name:<{width}}" + "".join(f"{splits[s]['per_class'][name]:>10}" for s in split_list))
    if len(shown) < len(names):
        rows.append(f"... {len(names) - len(shown)} more classes (--all-classes, or --json)")
    rows.append(f"{'total':<{width}}" + "".join(f"{splits[s]['rows']:>10}" for s in split_list))
    bad = {s: v["labels_out_of_range"] for s, v in splits.items() if v["labels_out_of_range"]}
    if bad:
        rows.append(f"labels outside the class list: {bad} (run `tlkit verify`)")
    return rows


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
