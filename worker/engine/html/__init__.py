"""report.html: the audit report a person reads, one self-contained file.

``write_report_html(report, out_dir)`` writes ``out_dir/report.html`` beside report.json (the
CLI and :func:`worker.engine.api.audit` call it); the service renders the same page from the
stored report at ``GET /v1/audits/{id}/report.html``. See docs/report.md.
"""

from .gallery import GalleryLimits
from .render import render_report_html, write_report_html

__all__ = ["GalleryLimits", "render_report_html", "write_report_html"]
