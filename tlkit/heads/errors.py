"""The one error type of stage two."""

from tlkit.errors import TlkitError


class HeadError(TlkitError, ValueError):
    """A head cannot be trained on this input (one class, empty split, unknown device...).

    A :class:`~tlkit.errors.TlkitError`, so the CLI prints it as one line; also a
    ``ValueError``, which is what scikit-learn code expects from an estimator
    given input it cannot use.
    """
