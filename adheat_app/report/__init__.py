"""Self-contained HTML reports: one per subject (``sub-<label>.html``) and one for the group (``group.html``)."""

from adheat_app.report.group import write_group_report
from adheat_app.report.subject import write_subject_report, write_subject_reports

__all__ = ["write_group_report", "write_subject_report", "write_subject_reports"]
