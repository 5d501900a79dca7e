"""Predictions as a terminal table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json

PROBA_PREFIX = "p_"


def as_rows(pred) -> list[dict]:
    rows = []
    for path, label, proba in zip(pred.paths, pred.labels, pred.proba):
        row = {"path": path, "label": label}
        row.update({f"{PROBA_PREFIX}{name}": float(p) for name, p in zip(pred.class_names, proba)})
        rows.append(row)
    return rows


def to_csv(pred) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "label", *(PROBA_PREFIX + c for c in pred.class_names)],
                            lineterminator="\n")
    writer.writeheader()
    for row in as_rows(pred):
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})  # full precision
    return buf.getvalue()


def to_json(pred, run: str) -> str:
    doc = {
        "run": run,
        "class_names": list(pred.class_names),
        "predictions": [
            {"path": p, "label": label, "probabilities": dict(zip(pred.class_names, map(float, proba)))}
            for p, label, proba in zip(pred.paths, pred.labels, pred.proba)
        ],
        "errors": [{"path": p, "reason": r} for p, r in pred.errors],
    }
    return json.dumps(doc, indent=2) + "\n"


def to_table(pred) -> str:
    header = ["path", "label", *(f"p({c})" for c in pred.class_names)]
    body = [[row["path"], row["label"], *(f"{row[PROBA_PREFIX + c]:.4f}" for c in pred.class_names)]
            for row in as_rows(pred)]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = []
    for r in [header, *body]:
        cells = [str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
