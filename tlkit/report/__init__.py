"""``tlkit report``: compare finished runs in a table and in figures.

matplotlib and scikit-learn are imported when the figures are drawn.
"""

from tlkit.report.writer import write_report

__all__ = ["write_report"]
