#!/usr/bin/env python3
"""Where `make test` finds the hymenoptera photos; prints the folder for TLKIT_HYMENOPTERA.

    TLKIT_HYMENOPTERA="$(python scripts/test_data.py)" python -m pytest

The first that applies:

1. ``$TLKIT_HYMENOPTERA``, when set (``.ci/run`` sets it to ``../shared``);
2. under CI (``CI=true``): ``../shared/datasets/hymenoptera_data`` beside the
   checkout, as it is; nothing is downloaded, and a missing set fails the tests
   (tests/conftest.py) instead of skipping them;
3. ``../shared/datasets/hymenoptera_data`` beside the checkout, if it holds the set;
4. ``data/hymenoptera_data`` in the checkout (ignored by git; ``make demo`` uses
   it too), downloaded once with scripts/fetch_hymenoptera.py if it is not there
   yet, saying so in one line.

Offline, it prints nothing on standard output and one line on standard error:
which tests will be skipped, and how to provide the photos. The suite then
runs without them. ``TLKIT_HYMENOPTERA_URL`` downloads from another address
(a mirror; the tests point it at a closed port to play offline). Standard
library only, like fetch_hymenoptera.py: it runs before tlkit is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_hymenoptera import NAME, URL, FetchError, fetch, is_complete  # noqa: E402

ENV = "TLKIT_HYMENOPTERA"
URL_ENV = "TLKIT_HYMENOPTERA_URL"
CHECKOUT = Path(__file__).resolve().parent.parent
SHARED = Path("..") / "shared" / "datasets" / NAME  # beside the checkout, as CI lays it out
LOCAL = Path("data") / NAME  # inside the checkout; /data/ is in .gitignore
SKIPPED = "the tests that use the real photos (fixture `hymenoptera`: embed, faults, baseline, predict and more)"


def how_to_provide(url: str = URL) -> str:
    return (f"download {url} on a machine that is online, unzip it into data/ (giving {LOCAL}/train and "
            f"{LOCAL}/val) and run make test again, or run make test {ENV}=/path/to/{NAME}")


def resolve(checkout: Path = CHECKOUT, environ=os.environ, say=lambda line: print(line, file=sys.stderr)) -> str:
    """The folder for TLKIT_HYMENOPTERA, or "" when the photos cannot be had (``say`` got the one line why)."""
    if environ.get(ENV):
        return environ[ENV]
    shared = (checkout / SHARED).resolve()
    if environ.get("CI") == "true" or is_complete(shared):
        return str(shared)
    local = checkout / LOCAL
    if is_complete(local):
        return str(local)
    url = environ.get(URL_ENV) or URL
    try:
        fetch(local.parent, url)
    except (FetchError, OSError) as exc:
        reason = str(exc).split(";")[0]
        say(f"make test: the hymenoptera photos are not here and cannot be fetched ({reason}): {SKIPPED} are "
            f"skipped; to run them, {how_to_provide(url)}")
        return ""
    say(f"make test: fetched the hymenoptera photos into {LOCAL} (once: later runs use them; {ENV}=PATH uses another copy)")
    return str(local)


def main() -> int:
    print(resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
