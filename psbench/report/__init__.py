"""Markdown and PDF comparison reports over finished runs (``psbench report``).

Modules: ``collect`` (runs -> rows, never merging different hashes), ``stats`` (bootstrap CIs,
paired tests), ``quality`` / ``compare`` (per-row numbers, paired comparisons), ``tables``,
``figures``, ``efficiency`` (efficiency.json section), ``document`` (block model), ``markdown``, ``pdf``
and ``terminal`` (renderers), ``build`` (the entry point :func:`build_report`, and :func:`results_tables`
for ``psbench table``).
"""

from psbench.report.build import ReportResult, build_report
from psbench.report.quality import StatsConfig

__all__ = ["ReportResult", "StatsConfig", "build_report"]
