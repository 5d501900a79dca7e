"""``tlkit report``: compare finished runs in a table and in figures.

This package is imported when the CLI starts; :func:`write_report` imports
matplotlib and scikit-learn only when it runs.
"""

from __future__ import annotations


def __getattr__(name):
    if name == "write_report":
        from tlkit.report.writer import write_report

        return write_report
    raise AttributeError(name)


__all__ = ["write_report"]
