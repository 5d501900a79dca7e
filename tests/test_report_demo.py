"""`make demo` / `make reproduce` and the download helper they use when DATA= is not given."""

from __future__ import annotations

import functools
import http.server
import io
import json
import re
import shlex
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import launcher
import pytest

REPO = Path(__file__).resolve().parents[1]
FETCH = REPO / "scripts" / "fetch_hymenoptera.py"


def _fetch(*args, timeout=60):
    return subprocess.run([sys.executable, str(FETCH), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def server(tmp_path):
    """A local HTTP server over tmp_path/www (no internet needed)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def test_fetch_fails_fast_and_cleanly_when_offline(tmp_path):
    start = time.monotonic()
    # Nothing listens on port 9 of this machine: the same failure as no network, without needing one.
    result = _fetch(tmp_path / "data", "--url", "http://127.0.0.1:9/hymenoptera_data.zip", "--timeout", 5)
    assert time.monotonic() - start < 30
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download"), result.stderr
    assert "offline?" in lines[0] and "DATA=" in lines[0]
    assert not (tmp_path / "data" / "hymenoptera_data").exists()
    assert not list((tmp_path / "data").glob(".fetch-*"))  # no temporary leftovers


def test_fetch_unpacks_the_data_set_and_then_keeps_it(tmp_path, server):
    root, url = server
    files = {f"hymenoptera_data/{split}/{cls}/{i}.jpg": b"jpeg bytes" for split in ("train", "val")
             for cls in ("ants", "bees") for i in range(2)}
    files["hymenoptera_data/.DS_Store"] = b"junk"
    (root / "hym.zip").write_bytes(_zip_of(files))
    result = _fetch(tmp_path / "data", "--url", f"{url}/hym.zip")
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data" / "hymenoptera_data"
    assert result.stdout.strip() == str(data)
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*.jpg")) == sorted(
        k.removeprefix("hymenoptera_data/") for k in files if k.endswith(".jpg"))
    assert not (data / ".DS_Store").exists()
    (root / "hym.zip").unlink()  # a second call must not download again
    assert _fetch(tmp_path / "data", "--url", f"{url}/hym.zip").returncode == 0


@pytest.mark.parametrize("payload, message", [
    (b"<html>moved</html>", "did not return a zip file"),
    (_zip_of({"something/else.txt": b"x"}), "not the hymenoptera data set"),
])
def test_fetch_refuses_what_is_not_the_data_set(tmp_path, server, payload, message):
    root, url = server
    (root / "x.zip").write_bytes(payload)
    result = _fetch(tmp_path / "data", "--url", f"{url}/x.zip")
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "data" / "hymenoptera_data").exists()
    assert not list((tmp_path / "data").glob(".fetch-*"))


@pytest.mark.slow
def test_make_reproduce_end_to_end(hymenoptera_tiny, tmp_path):
    """embed, the demo's heads (tuned on a grid by cross-validation, several seeds each), the scratch baseline
    and the report, as `make reproduce` runs them; a small SEEDS=, CV=, HEAD_FLAGS= and two-value grids keep
    it quick, on the 12 images of hymenoptera_tiny (the grid search itself is tested in test_sweeps). Each
    tlkit command is forked from the launcher's preloaded server (TLKIT=), so it does not import torch again."""
    runs = tmp_path / "runs"
    cmd = ["make", "-s", "-C", str(REPO), "-o", ".venv/.installed-stamp", "reproduce", f"DATA={hymenoptera_tiny}",
           "WEIGHTS=random", f"CACHE={tmp_path / 'feats.h5'}", f"RUNS={runs}", "SCRATCH_FLAGS=--epochs 1 --no-progress",
           "SEEDS=3", "CV=2", "DEMO_LRS=0.001,0.01", "DEMO_CS=0.1,1", "DEMO_ALPHAS=0.0001,1",
           "HEAD_FLAGS=--epochs 2 --no-progress", f"TLKIT={shlex.join([*launcher.command_prefix(), '-m', 'tlkit.cli'])}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    table = json.loads((runs / "report" / "report.json").read_text())
    assert table["baseline"] == "scratch"
    heads = ["linear", "logreg", "quantum", "bottleneck", "svc", "mlp"]  # the Makefile's DEMO_HEADS
    assert [r["name"] for r in table["runs"]] == ["scratch", *heads]
    assert all(r["seeds"] == [0, 1, 2] for r in table["runs"][1:])
    for name in ("scratch", *heads):
        assert (runs / "report" / f"confusion-{name}.png").is_file()
    pairs = [(c["run"], c["baseline"]) for c in table["comparisons"]]
    assert pairs == [(h, "scratch") for h in heads] + [("quantum", "bottleneck")]
    assert "quantum vs bottleneck: final accuracy" in result.stdout
    # the comparison's row; a head that did not train in these few epochs carries tlkit.health's ⚠ mark
    assert re.search(r"^\| quantum( ⚠)? \| bottleneck( ⚠)? \|", (runs / "report" / "report.md").read_text(), re.M)
    # A second make keeps every finished run and only rewrites the report.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("is finished: kept") == 1 + len(heads)
