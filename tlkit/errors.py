"""Errors a user can cause and fix.

The CLI prints these as one line (``error: ...``) with a non-zero exit code;
anything else is a bug and keeps its traceback.
"""


class TlkitError(Exception):
    """Base class: a problem with the user's input, files or environment."""


class DataError(TlkitError):
    """The data folder is missing, empty or laid out in a way tlkit cannot read."""


class BadImage(TlkitError):
    """One image file could not be decoded; the reason is the message."""


class WeightsError(TlkitError):
    """Backbone weights could not be found, downloaded or loaded."""


class CacheError(TlkitError):
    """A feature cache is missing, unfinished, foreign, corrupt or incompatible."""


class CacheBusy(CacheError):
    """Another process is writing the same cache."""


class HeadError(TlkitError, ValueError):
    """A head or its training loop cannot run on this input (one class, empty split, bad seeds...).

    The one error type of stage two. Here, not in ``tlkit.heads``, because the
    training loop (``tlkit.train``, a layer below the heads) raises it too. Also a
    ``ValueError``, which is what scikit-learn code expects from an estimator
    given input it cannot use.
    """
