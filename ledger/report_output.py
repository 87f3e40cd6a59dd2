"""A report as text: one CSV (the same for `referral report --format csv` and the page's
download) and plain tables for a terminal.

The CSV is long ("tidy"): one line per cell, columns `table,row,column,value`, so every table fits
in one file and a spreadsheet's pivot puts any of them back in shape. `value` is a number, `<5`
(a suppressed count) or empty (a statistic left out, or none to give). The first lines are the
report's own: `report,generated_at`, `report,suppressed`, the filters, and a notice when small
cells are not suppressed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from ledger.reports import Report

CSV_COLUMNS = ("table", "row", "column", "value")
# The report's tables, in the order every output gives them.
TABLES = (
    "by_month", "by_region", "by_sector", "by_indicator", "by_age_group", "acceptance_by_urgency", "acceptance_by_region",
    "partners", "escalations", "outcomes", "capacity",
)  # fmt: skip


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def table_columns(row: BaseModel) -> list[tuple[str, Any]]:
    """A table row's cells after its key: a `by_*` dict gives one column per key, another dict
    `field.key` columns, a plain field its own name."""
    cells: list[tuple[str, Any]] = []
    for name, value in list(row)[1:]:
        if isinstance(value, dict):
            cells += [(k if name.startswith("by_") else f"{name}.{k}", v) for k, v in value.items()]
        else:
            cells.append((name, value))
    return cells


def cells(report: Report) -> Iterator[tuple[str, str, str, str]]:
    yield ("report", "generated_at", "", report.generated_at.isoformat())
    yield ("report", "suppressed", "", _text(report.suppressed))
    if report.notice:
        yield ("report", "notice", "", report.notice)
    for name, value in report.filters:
        yield ("report", f"filter.{name}", "", _text(value))
    yield ("referrals", "all", "count", _text(report.referrals))
    for table in TABLES:
        for row in getattr(report, table):
            key = _text(next(iter(row))[1])
            for column, value in table_columns(row):
                yield (table, key, column, _text(value))


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(cells(report))
    return out.getvalue()


# Shorter headers for a terminal (the CSV keeps the full names).
_SHORT = {"declined_by_code.": "code_", "accepted_before_deadline_share": "on_time_share", "median_reply_hours": "median_reply_h"}


def _short(name: str) -> str:
    for long, short in _SHORT.items():
        name = name.replace(long, short)
    return name


def to_text(report: Report) -> str:
    """Plain tables for a terminal, codes as they are (the page translates them)."""
    lines: list[str] = []
    if report.notice:
        lines += [f"*** {report.notice} ***", ""]
    f = report.filters
    period = f"{f.date_from or '...'} to {f.date_to or '...'}"
    lines.append(f"Referrals started {period}{f' in {f.region}' if f.region else ''}: {report.referrals}")
    how = "counts from 1 to 4 shown as <5" if report.suppressed else "small cells NOT suppressed"
    lines.append(f"Generated {report.generated_at:%Y-%m-%d %H:%M} UTC; {how}")
    for table in TABLES:
        rows = getattr(report, table)
        lines += ["", table.replace("_", " ").capitalize()]
        if not rows:
            lines.append("  (none)")
            continue
        header = [next(iter(rows[0]))[0], *(_short(c) for c, _ in table_columns(rows[0]))]
        body = [[_text(next(iter(r))[1]), *(_text(v) or "-" for _, v in table_columns(r))] for r in rows]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        for line in [header, *body]:
            lines.append("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip())
    if report.notice:
        lines += ["", f"*** {report.notice} ***"]
    return "\n".join(lines) + "\n"
