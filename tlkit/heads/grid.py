"""``fit-head --grid PARAM=V1,V2,...``: a head's hyperparameter grid, parsed and checked before anything is read.

Each PARAM is a hyperparameter the head declares in :mod:`tlkit.heads.registry`
(the names its ``--help`` lists); each value is parsed and checked by that
declaration (:meth:`tlkit.train.hparams.HParam.parse`), so a grid value obeys
exactly what the flag would. The grid is the cartesian product of the lists
(:mod:`tlkit.heads.sweep`).

Imported when the CLI starts: no torch, scikit-learn or PennyLane here.
"""

from __future__ import annotations

from collections.abc import Sequence

from tlkit.errors import HeadError


def gridable(spec) -> list[str]:
    """The names a grid may take for this head: its hyperparameters with a single value (a number, a word),
    except the seed (--seeds)."""
    return [p.name for p in spec.params if p.value_type is not None and p.name != "seed"]


def parse_grid(spec, items: Sequence[str]) -> dict[str, list]:
    """``{name: [values]}`` from ``--grid`` items, in the order given; one-line HeadError for bad input."""
    from tlkit.heads.registry import HEADS

    grid: dict[str, list] = {}
    names = gridable(spec)
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_").lstrip("_")
        label = f"--grid {item}"
        if not sep or not name:
            raise HeadError(f"{label}: write PARAM=V1,V2,... (e.g. --grid lr=0.001,0.01,0.1)")
        if name == "seed":
            raise HeadError(f"{label}: seeds are not a grid; give them with --seeds")
        if name not in names:
            others = [h for h, s in HEADS.items() if name in gridable(s)]
            where = f" (--head {', '.join(others)} has it)" if others else ""
            raise HeadError(f"{label}: the {spec.name} head has no hyperparameter {name!r}{where}; "
                            f"it has: {', '.join(names)}")
        if name in grid:
            raise HeadError(f"{label}: {name} is given twice; give all its values in one --grid")
        texts = [t for t in values.split(",")]
        if not values.strip() or any(not t.strip() for t in texts):
            raise HeadError(f"{label}: an empty value; give one or more values, e.g. --grid {name}=V1,V2")
        try:
            parsed = [spec.param(name).parse(t) for t in texts]
        except ValueError as exc:
            raise HeadError(f"{label}: {exc}") from None
        if len(set(map(repr, parsed))) < len(parsed):
            raise HeadError(f"{label}: a value is given twice")
        grid[name] = parsed
    return grid
