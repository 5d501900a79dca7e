"""The layers of tlkit point one way: each imports only from the layers below it.

The picture is the ``layers`` block of docs/design.md; this test reads it and
holds every import of every module against it: imports at the top of a file,
inside functions (deferred ones are imports all the same), and modules loaded
by name (``importlib.import_module("tlkit....")``, the command table). It also
checks that no two modules import each other, directly or round a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PICTURE = ROOT / "docs" / "design.md"


# -- the picture ---------------------------------------------------------------------------------

def read_picture(text: str) -> list[list[str]]:
    """The rows of the ```layers block, top row first; each row the units it holds (module paths under tlkit)."""
    block = re.search(r"^```layers\n(.*?)^```", text, re.S | re.M)
    assert block, "docs/design.md has no ```layers block"
    rows = []
    for line in block.group(1).splitlines():
        units = line.split("#", 1)[0].split()
        if units:
            rows.append(units)
    return rows


def unit_of(module: str, rows: list[list[str]]) -> tuple[int, str] | None:
    """(row from the bottom, unit) of a module: the unit naming it or its closest enclosing package."""
    best = None
    for height, row in enumerate(reversed(rows)):
        for unit in row:
            name = "tlkit" if unit == "tlkit" else f"tlkit.{unit}"
            covers = module == name or (unit != "tlkit" and module.startswith(name + "."))
            if covers and (best is None or len(name) > len(best[2])):
                best = (height, unit, name)
    return best and best[:2]


# -- the imports ---------------------------------------------------------------------------------

def modules_of(package_dir: Path) -> dict[str, Path]:
    """Every module of the package at ``package_dir`` by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported tlkit module, line) for every import in the file, wherever it stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def add(name: str, line: int) -> None:
        while name and name not in known:  # tlkit.cache.reader.load_cache -> tlkit.cache.reader
            name = name.rpartition(".")[0]
        if name:
            found.append((name, line))

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..cache import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # from tlkit.embed import precision: the module tlkit.embed.precision
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base, node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            found.append((node.value, node.lineno))  # loaded by name: importlib.import_module("tlkit.x")
    return sorted({(name, line) for name, line in found if name != module}, key=lambda f: (f[1], f[0]))


def import_graph(package_dir: Path) -> dict[str, list[tuple[str, int]]]:
    modules = modules_of(package_dir)
    return {m: imports_of(m, p, set(modules)) for m, p in modules.items()}


def upward_imports(graph, rows) -> list[str]:
    """Every import that points up or sideways in the picture: 'module:line imports target (unit -> unit)'."""
    bad = []
    for module, targets in sorted(graph.items()):
        (height, unit) = unit_of(module, rows)
        for target, line in targets:
            target_height, target_unit = unit_of(target, rows)
            if target_unit != unit and target_height >= height:
                way = "sideways" if target_height == height else "up"
                bad.append(f"{module}:{line} imports {target} ({unit} -> {target_unit}, {way})")
    return bad


def cycles(graph) -> list[list[str]]:
    """Modules that import each other, directly or round a longer loop (each cycle once)."""
    found, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target, _ in graph.get(module, ()):
            if target == module.rpartition(".")[0] or module.startswith(target + "."):
                continue  # a module's own package: Python has run its __init__ already
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return found


# -- the tests -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows():
    return read_picture(PICTURE.read_text())


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT / "tlkit")


def test_every_module_has_a_place_in_the_picture(rows, graph):
    units = [u for row in rows for u in row]
    assert len(units) == len(set(units)), "a unit appears twice in the picture"
    assert not [m for m in graph if unit_of(m, rows) is None], "modules the picture does not place"


def test_imports_point_down_the_layers(rows, graph):
    assert upward_imports(graph, rows) == []


def test_no_two_modules_import_each_other(graph):
    assert cycles(graph) == []


PICTURE_OF_TEST = """
```layers
cli
embed  heads       # siblings
cache
data
errors  tlkit
```
"""


def _package(tmp_path: Path, files: dict[str, str]) -> dict:
    for name, text in {"__init__.py": "", **files}.items():
        path = tmp_path / "tlkit" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    return import_graph(tmp_path / "tlkit")


def test_the_checker_flags_an_import_that_points_up(tmp_path):
    """The checker itself can fail: on a small package with one import of each kind."""
    rows = read_picture(PICTURE_OF_TEST)
    graph = _package(tmp_path, {
        "errors.py": "",
        "cache/schema.py": "from tlkit.errors import X\n",  # down: fine
        "data/discovery.py": "import os\n\ndef splits():\n    from tlkit.cache.schema import ORDER\n",  # up, in a function
        "data/decode.py": "from ..cache import schema\n",  # up, relative
        "embed/reader.py": "from tlkit.data import discovery\nfrom tlkit.heads import errors\n",  # down; sideways
        "heads/errors.py": "",
        "cli.py": "import importlib\nimportlib.import_module('tlkit.embed.reader')\n",  # down, by name
    })
    assert upward_imports(graph, rows) == [
        "tlkit.data.decode:1 imports tlkit.cache.schema (data -> cache, up)",
        "tlkit.data.discovery:4 imports tlkit.cache.schema (data -> cache, up)",
        "tlkit.embed.reader:2 imports tlkit.heads.errors (embed -> heads, sideways)",
    ]
    assert ("tlkit.embed.reader", 2) in graph["tlkit.cli"]


def test_the_checker_finds_modules_that_import_each_other(tmp_path):
    graph = _package(tmp_path, {
        "cache/parts.py": "from tlkit.cache.reader import read\n",
        "cache/reader.py": "def open_h5():\n    from tlkit.cache import parts\n",
        "cache/schema.py": "from tlkit import cache\n",  # its own package: no cycle
    })
    assert cycles(graph) == [["tlkit.cache.parts", "tlkit.cache.reader", "tlkit.cache.parts"]]


# -- the command line loads each command when it is used -------------------------------------------

def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this one has imported everything already); its stdout."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


_LOADED = ("import sys\nfrom tlkit.commands import COMMANDS\nfrom tlkit.cli import main\n"
           "try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
           "print('loaded:', sorted({{c.module for c in COMMANDS if c.module in sys.modules}}), 'torch' in sys.modules)\n")


def test_help_lists_every_command_without_importing_one():
    from tlkit.commands import COMMANDS

    out = _fresh(_LOADED.format(args=["--help"]))
    listed = " ".join(out.split())
    for command in COMMANDS:
        assert f"{command.name} {command.summary}" in listed, command.name
    assert out.splitlines()[-1] == "loaded: [] False"


def test_a_command_loads_its_own_module_only():
    out = _fresh(_LOADED.format(args=["fit-head", "--help"]))
    assert "--head" in out and "Training loop" in out
    assert out.splitlines()[-1] == "loaded: ['tlkit.heads.cli'] False"


def test_the_table_names_each_click_command():
    import importlib

    import click

    from tlkit.cli import main
    from tlkit.commands import COMMANDS

    assert len({c.name for c in COMMANDS}) == len(COMMANDS)
    with click.Context(main) as ctx:
        for entry in COMMANDS:
            command = getattr(importlib.import_module(entry.module), entry.attribute)
            assert isinstance(command, click.Command) and command.name == entry.name
            assert main.get_command(ctx, entry.name) is command
            assert len(entry.summary) <= 62, "a summary is one line of `tlkit --help`"
        assert main.get_command(ctx, "no-such-command") is None


def test_fit_head_linear_loads_only_what_it_needs(tmp_path):
    """The linear head's whole command stays clear of what it does not use: torch._dynamo (torch.optim
    would import it; 1.6 s), PennyLane, matplotlib, torchvision and the other commands' modules."""
    from heads_data import blobs, write_cache

    cache = write_cache(tmp_path / "feats.h5", {"train": blobs(40, 2, 0), "val": blobs(20, 2, 1)}, ["a", "b"])
    args = ["fit-head", "--head", "linear", "--cache", str(cache), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--no-progress"]
    code = ("import sys\nfrom tlkit.cli import main\ntry:\n    main(%r)\nexcept SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "print('loaded:', sorted(m for m in ('torch._dynamo', 'pennylane', 'matplotlib', 'torchvision', 'tlkit.embed',"
            " 'tlkit.predict', 'tlkit.report', 'tlkit.baseline') if m in sys.modules), 'torch' in sys.modules)\n") % args
    out = _fresh(code)
    assert (tmp_path / "run" / "metrics.json").exists()
    assert out.splitlines()[-1] == "loaded: [] True"
