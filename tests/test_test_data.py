"""`make test` on a fresh machine: where the photos come from (scripts/test_data.py), and offline.

The resolution order is checked on its own; one test runs `make test` itself in
a fresh copy of the checkout without the photos and with the network blocked
(the download address points at a closed port), on two stand-in tests rather
than the whole suite: it must say in one line which tests are skipped and how
to provide the photos, and skip only the test that needs them.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
SUBSETS = ("train/ants", "train/bees", "val/ants", "val/bees")


def _script():
    spec = importlib.util.spec_from_file_location("test_data_script", CHECKOUT / "scripts" / "test_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _closed_port_url() -> str:
    """An address on this machine where nobody listens: a download fails at once, as offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hymenoptera_data.zip"


def _photos(folder: Path) -> Path:
    for sub in SUBSETS:
        (folder / sub).mkdir(parents=True)
        (folder / sub / "a.jpg").write_bytes(b"stand-in")
    return folder


@pytest.fixture
def served_zip(tmp_path):
    """A stand-in hymenoptera zip served over HTTP on this machine: (url, list of requests)."""
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "hymenoptera_data.zip", "w") as archive:
        for sub in SUBSETS:
            archive.writestr(f"hymenoptera_data/{sub}/a.jpg", b"stand-in")
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hymenoptera_data.zip", requests
    finally:
        server.shutdown()
        server.server_close()


def test_the_photos_are_found_in_order_env_shared_local(tmp_path):
    script = _script()
    checkout = tmp_path / "project"
    checkout.mkdir()
    lines = []
    offline = {script.URL_ENV: _closed_port_url()}

    def resolve(**env):
        return script.resolve(checkout, {**offline, **env}, lines.append)

    assert resolve(TLKIT_HYMENOPTERA="/anywhere/hymenoptera_data") == "/anywhere/hymenoptera_data"
    shared = tmp_path / "shared" / "datasets" / "hymenoptera_data"
    # CI: ../shared as it is, present or not (a missing set then fails the tests); nothing is downloaded
    assert resolve(CI="true") == str(shared)
    assert not (checkout / "data").exists() and lines == []
    local = _photos(checkout / "data" / "hymenoptera_data")
    assert resolve() == str(local)
    _photos(shared)
    assert resolve() == str(shared)  # ../shared beside the checkout comes before data/
    assert lines == []


def test_the_photos_are_fetched_once_into_data(tmp_path, served_zip):
    script = _script()
    url, requests = served_zip
    checkout = tmp_path / "project"
    checkout.mkdir()
    lines = []
    assert script.resolve(checkout, {script.URL_ENV: url}, lines.append) == str(checkout / "data" / "hymenoptera_data")
    assert len(lines) == 1 and lines[0].startswith("make test: fetched the hymenoptera photos into data/hymenoptera_data")
    assert all((checkout / "data" / "hymenoptera_data" / sub / "a.jpg").is_file() for sub in SUBSETS)
    assert script.resolve(checkout, {script.URL_ENV: url}, lines.append) == str(checkout / "data" / "hymenoptera_data")
    assert len(requests) == 1 and len(lines) == 1  # the second time: nothing downloaded, nothing said


def test_offline_it_says_which_tests_skip_and_how_to_provide_the_photos(tmp_path):
    script = _script()
    checkout = tmp_path / "project"
    checkout.mkdir()
    lines = []
    url = _closed_port_url()
    assert script.resolve(checkout, {script.URL_ENV: url}, lines.append) == ""
    assert len(lines) == 1 and "\n" not in lines[0]
    line = lines[0]
    assert line.startswith("make test: the hymenoptera photos are not here and cannot be fetched (cannot download "), line
    assert "the tests that use the real photos (fixture `hymenoptera`" in line and "are skipped" in line
    assert f"download {url}" in line and "unzip it into data/" in line
    assert "make test TLKIT_HYMENOPTERA=/path/to/hymenoptera_data" in line
    assert not (checkout / "data" / "hymenoptera_data").exists()


STAND_INS = '''
def test_without_the_photos():
    assert sum(range(4)) == 6


def test_with_the_photos(hymenoptera):
    assert (hymenoptera / "train").is_dir()
'''


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_test_in_a_fresh_offline_checkout_skips_only_the_photo_tests(tmp_path):
    """The real Makefile, script and conftest in a fresh copy; a stand-in venv runs this Python."""
    fresh = tmp_path / "work" / "tlkit"  # no ../shared beside it, no data/ in it
    fresh.mkdir(parents=True)
    for name in ("Makefile", "setup.cfg", "pyproject.toml", "constraints.txt"):
        shutil.copy2(CHECKOUT / name, fresh / name)
    shutil.copytree(CHECKOUT / "scripts", fresh / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    (fresh / "tests").mkdir()
    shutil.copy2(CHECKOUT / "tests" / "conftest.py", fresh / "tests" / "conftest.py")
    (fresh / "tests" / "test_stand_ins.py").write_text(STAND_INS)
    venv_bin = fresh / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv_bin / "python").chmod(0o755)
    (fresh / ".venv" / ".installed-stamp").touch()  # newer than setup.cfg & co: make installs nothing
    env = {k: v for k, v in os.environ.items() if k not in ("TLKIT_HYMENOPTERA", "CI", "MAKEFLAGS", "MFLAGS")}
    env["TLKIT_HYMENOPTERA_URL"] = _closed_port_url()
    proc = subprocess.run(["make", "-s", "test"], cwd=fresh, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    said = [line for line in output.splitlines() if line.startswith("make test:")]
    assert len(said) == 1 and "are skipped; to run them, download" in said[0], output
    assert "1 passed, 1 skipped" in output, output
    assert "SKIPPED [1] " in output and "needs the hymenoptera photos" in output, output
    assert not (fresh / "data" / "hymenoptera_data").exists()
