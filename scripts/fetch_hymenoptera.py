#!/usr/bin/env python3
"""Download the hymenoptera (ants / bees) photos the PyTorch transfer-learning tutorial uses.

    python scripts/fetch_hymenoptera.py data/          # -> data/hymenoptera_data/{train,val}/{ants,bees}

Nothing is left half-done: the zip is downloaded to a temporary file, checked,
extracted into a temporary folder beside the target and renamed into place.
An existing, complete data set is kept (nothing is downloaded). Offline, it
fails within seconds with a one-line message saying what to do instead.
Standard library only, so it runs before tlkit is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
NAME = "hymenoptera_data"
EXPECTED = ("train/ants", "train/bees", "val/ants", "val/bees")
TIMEOUT_S = 20


class FetchError(Exception):
    pass


def is_complete(folder: Path) -> bool:
    return all((folder / sub).is_dir() and any((folder / sub).iterdir()) for sub in EXPECTED)


def download(url: str, target: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as fh:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(1 << 20):
                fh.write(block)
                done += len(block)
                if total and sys.stderr.isatty():
                    print(f"\rdownloading {url}: {done * 100 // total}%", end="", file=sys.stderr)
            if total and sys.stderr.isatty():
                print(file=sys.stderr)
            if total and done != total:
                raise FetchError(f"download of {url} stopped after {done} of {total} bytes; run again")
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(
            f"cannot download {url} ({reason}); offline? download the zip on another machine, unzip it "
            f"and pass its folder, e.g. make demo DATA=path/to/{NAME}"
        ) from None


def extract(zip_path: Path, dest: Path, url: str) -> Path:
    """Unzip into ``dest`` and return the data folder, refusing archives that are not the data set."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():
                resolved = (dest / member).resolve()
                if not str(resolved).startswith(str(dest.resolve()) + os.sep):
                    raise FetchError(f"{url} holds a path outside the target folder ({member}); refusing it")
            archive.extractall(dest)
    except zipfile.BadZipFile:
        raise FetchError(f"{url} did not return a zip file; the download is corrupt or the address changed") from None
    data = dest / NAME
    if not is_complete(data):
        raise FetchError(f"{url} is a zip but not the hymenoptera data set (no {NAME}/train/ants ... inside)")
    return data


def fetch(out_dir: Path, url: str = URL, timeout: float = TIMEOUT_S) -> Path:
    target = out_dir / NAME
    if is_complete(target):
        return target
    if target.exists():
        raise FetchError(f"{target} exists but is not a complete data set; move it away and run again")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".fetch-") as tmp:
        zip_path = Path(tmp) / "data.zip"
        download(url, zip_path, timeout)
        data = extract(zip_path, Path(tmp) / "x", url)
        for junk in sorted(data.rglob(".*"), reverse=True):  # macOS metadata some zips carry
            if junk.is_dir():
                shutil.rmtree(junk, ignore_errors=True)
            else:
                junk.unlink(missing_ok=True)
        os.replace(data, target)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default="data", help="folder to put hymenoptera_data/ in (default: data)")
    parser.add_argument("--url", default=URL, help=f"where to download the zip from (default: {URL})")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    try:
        path = fetch(Path(args.out_dir), args.url, args.timeout)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or exc} ({getattr(exc, 'filename', '') or args.out_dir})", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
