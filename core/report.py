"""``out/report.html``: a self-contained page about a run (no scripts, no network).

Built from what the run wrote: ``summary.json``, ``audiences_daily.jsonl``, the dead-letter files
and the local export directory. Pure: the launcher reads those and writes the page
(``pipelines.summary.write_report``), on whatever file system ``--output_dir`` is. The page holds:

* the run's figures;
* audience sizes over time: a line chart (inline SVG, as wide as the page) with axis titles, a
  legend beside it, and a time axis over the days that hold the run's activity: days far from the
  rest (a record dated 9999 or 1970) are named below the chart instead of squeezing it flat;
* enters and exits per audience and per day (one row per day);
* the job's computed traits: what each computes, the audiences that read it, the works that send it
  (when the job has any);
* the works' figures;
* dead letters: per file, how many and why (the reasons counted, with the first record's source);
* export files: one row per window with its start and end (UTC), rows and bytes.
"""
from __future__ import annotations

import csv
import datetime
import gzip
import html
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict, Union

from cdp_activation.core.timeutil import civil_from_days

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]
#: Days of activity more than this many days from the busiest run of days are outliers: named
#: below the chart, not drawn (one stray date must not squeeze months of data into a pixel).
OUTLIER_GAP_DAYS = 31
#: Reasons listed per dead-letter file; the rest are counted together.
MAX_REASONS = 10
#: Export windows listed in full; a longer list is folded (``<details>``), its totals shown.
OPEN_WINDOW_ROWS = 48
_WINDOW_NAME = re.compile(r"_(\d+)_(\d+)\.(csv|csv\.gz|parquet)$")


class DailyCount(TypedDict):
    """A row of ``audiences_daily.jsonl``: enters or exits of one audience on one day (UTC)."""
    day: str        # YYYY-MM-DD
    audience: str
    event: str      # "enter" | "exit"
    count: int


#: ``(days, {audience: [(day, members at the end of that day)]})``, the days in order.
Sizes = tuple[list[str], dict[str, list[tuple[str, int]]]]
#: An export file's row in the page: file, window start, window end (UTC), rows ("" if unknown),
#: bytes.
ExportWindow = tuple[str, str, str, Union[int, str], int]


def audience_sizes(daily: Sequence[DailyCount]) -> Sizes:
    """{audience: [(day, members at the end of that day)]} from daily enter/exit counts."""
    seen = sorted({r["day"] for r in daily})
    days = []
    if seen:  # every day from the first to the last, so the time axis is proportional
        date = datetime.date.fromisoformat(seen[0])
        last = datetime.date.fromisoformat(seen[-1])
        # Bounded: extreme but valid dates (year 1, year 9999) must not make the report walk or
        # overflow; beyond ten years only the days with activity are plotted.
        if (last - date).days > 3660:
            days = list(seen)
        else:
            while date <= last:
                days.append(date.isoformat())
                if date == datetime.date.max:
                    break
                date += datetime.timedelta(days=1)
    net = {}
    for r in daily:
        sign = 1 if r["event"] == "enter" else -1
        net.setdefault(r["audience"], {}).setdefault(r["day"], 0)
        net[r["audience"]][r["day"]] += sign * r["count"]
    series = {}
    for audience, per_day in sorted(net.items()):
        size, points = 0, []
        for day in days:
            size += per_day.get(day, 0)
            points.append((day, size))
        series[audience] = points
    return days, series


def split_outlier_days(daily: Iterable[DailyCount], gap_days: int = OUTLIER_GAP_DAYS
                       ) -> tuple[str | None, str | None, list[tuple[str, list[tuple[str, int, int]]]]]:
    """``(first day, last day, outliers)`` of the chart's time axis.

    The days with activity are cut into runs wherever two of them are more than ``gap_days``
    apart; the axis spans the run with the most enters and exits, and ``outliers`` lists the
    other days as ``[(day, [(audience, enters, exits)])]``. No activity: ``(None, None, [])``.
    """
    per_day = {}
    for r in daily:
        entry = per_day.setdefault(r["day"], {}).setdefault(r["audience"], [0, 0])
        entry[0 if r["event"] == "enter" else 1] += r["count"]
    if not per_day:
        return None, None, []
    days = sorted(per_day, key=_day_number)
    runs, current = [], [0]
    for i in range(1, len(days)):
        if _day_number(days[i]) - _day_number(days[i - 1]) > gap_days:
            runs.append(current)
            current = []
        current.append(i)
    runs.append(current)

    def weight(run):
        return sum(sum(sum(c) for c in per_day[days[i]].values()) for i in run)

    main = max(runs, key=lambda run: (weight(run), len(run)))
    keep = set(main)
    outliers = [(days[i], [(a, c[0], c[1]) for a, c in sorted(per_day[days[i]].items())])
                for i in range(len(days)) if i not in keep]
    return days[main[0]], days[main[-1]], outliers


def _day_number(day):
    """Days since 1970-01-01 of ``YYYY-MM-DD``, the year of any length (``10000-01-02`` is the
    day a record of 9999-12-31 plus a window leaves it); one that is not a date sorts first."""
    try:
        year, month, date = (int(part) for part in day.rsplit("-", 2))
    except ValueError:
        return float("-inf")
    # Howard Hinnant's days_from_civil, as core.timeutil's inverse of it.
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + date - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def clipped_sizes(daily: Iterable[DailyCount], first: str, last: str) -> Sizes:
    """Audience sizes (as :func:`audience_sizes`) for every day from ``first`` to ``last``;
    activity before ``first`` counts in the sizes, activity after ``last`` does not show."""
    days = ["%04d-%02d-%02d" % civil_from_days(n)
            for n in range(_day_number(first), _day_number(last) + 1)]
    carried, net = {}, {}
    for r in daily:
        sign = 1 if r["event"] == "enter" else -1
        if _day_number(r["day"]) < _day_number(first):
            carried[r["audience"]] = carried.get(r["audience"], 0) + sign * r["count"]
        else:
            net.setdefault(r["audience"], {})
            net[r["audience"]][r["day"]] = net[r["audience"]].get(r["day"], 0) + sign * r["count"]
        carried.setdefault(r["audience"], 0)
    series = {}
    for audience in sorted(carried):
        size, points = carried[audience], []
        for day in days:
            size += net.get(audience, {}).get(day, 0)
            points.append((day, size))
        series[audience] = points
    return days, series


def _nice_top(value):
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above ``value`` (at least 1)."""
    value = max(1, value)
    scale = 1
    while True:
        for step in (1, 2, 2.5, 5):
            if step * scale >= value:
                top = step * scale
                return int(top) if top == int(top) else top
        scale *= 10


def _chart(days, series, width=1000, height=380):
    """The audience-size chart: SVG as wide as its container (viewBox), legend outside it."""
    if not days:
        return '<p class="empty">No audience changes in this run.</p>'
    left, right, top_pad, bottom = 70, 44, 16, 58
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    low = min([0] + [size for points in series.values() for _, size in points])
    top = _nice_top(max([1] + [size for points in series.values() for _, size in points]))
    span = top - low
    step = plot_w / max(1, len(days) - 1)

    def x(i):
        return left + i * step

    def y(v):
        return top_pad + plot_h - plot_h * (v - low) / span

    parts = ['<svg id="sizes-chart" role="img" aria-label="Audience sizes over time" '
             'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="100%%" '
             'preserveAspectRatio="xMidYMid meet">' % (width, height)]
    for k in range(5):  # horizontal grid and y ticks
        value = low + span * k / 4
        label = ("%d" % value) if float(value).is_integer() else ("%.1f" % value)
        parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s"/>'
                     % (left, y(value), width - right, y(value), "#444" if k == 0 else "#e3e3e3"))
        parts.append('<text x="%d" y="%.1f" font-size="13" text-anchor="end">%s</text>'
                     % (left - 6, y(value) + 4, label))
    ticks = sorted({round(i * (len(days) - 1) / 6) for i in range(7)}) if len(days) > 1 else [0]
    for i in ticks:
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#444"/>'
                     % (x(i), top_pad + plot_h, x(i), top_pad + plot_h + 5))
        parts.append('<text class="x-tick" x="%.1f" y="%d" font-size="13" text-anchor="middle">%s</text>'
                     % (x(i), top_pad + plot_h + 20, html.escape(days[i])))
    parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#444"/>'
                 % (left, top_pad, left, top_pad + plot_h))
    parts.append('<text class="axis-title" x="%.1f" y="%d" font-size="14" text-anchor="middle">'
                 'Day (UTC)</text>' % (left + plot_w / 2, height - 10))
    parts.append('<text class="axis-title" x="18" y="%.1f" font-size="14" text-anchor="middle" '
                 'transform="rotate(-90 18 %.1f)">Members at the end of the day</text>'
                 % (top_pad + plot_h / 2, top_pad + plot_h / 2))
    legend = []
    for n, (audience, points) in enumerate(series.items()):
        color = COLORS[n % len(COLORS)]
        path = " ".join("%s%.1f,%.1f" % ("M" if i == 0 else "L", x(i), y(v))
                        for i, (_, v) in enumerate(points))
        parts.append('<path class="series" data-audience="%s" d="%s" fill="none" stroke="%s" '
                     'stroke-width="2"/>' % (html.escape(audience), path, color))
        legend.append('<li><span class="swatch" style="background:%s"></span>%s '
                      '<span class="muted">(%d at the end)</span></li>'
                      % (color, html.escape(audience), points[-1][1] if points else 0))
    parts.append("</svg>")
    return ('<div class="chart"><div class="plot">%s</div><ul class="legend" id="legend">%s</ul></div>'
            % ("\n".join(parts), "".join(legend)))


def _outliers_note(outliers, first, last):
    if not outliers:
        return ""
    items = "".join("<li>%s: %s</li>" % (html.escape(day), ", ".join(
        "%s %s" % (html.escape(a), " ".join(t for t in ("+%d" % e if e else "", "&minus;%d" % x if x else "")
                                            if t)) for a, e, x in counts))
        for day, counts in outliers)
    return ('<div class="outliers" id="outliers"><p>Not drawn: %d day%s of activity far from %s to '
            '%s (often a record with a wrong date):</p><ul>%s</ul></div>'
            % (len(outliers), "" if len(outliers) == 1 else "s", html.escape(first),
               html.escape(last), items))


def _table(headers, rows, table_id=None, numeric=()):
    head = "".join("<th%s>%s</th>" % (' class="num"' if i in numeric else "", html.escape(str(h)))
                   for i, h in enumerate(headers))
    body = "".join("<tr>%s</tr>" % "".join(
        "<td%s>%s</td>" % (' class="num"' if i in numeric else "", html.escape(str(c)))
        for i, c in enumerate(row)) for row in rows)
    return "<table%s><thead><tr>%s</tr></thead><tbody>%s</tbody></table>" % (
        ' id="%s"' % table_id if table_id else "", head, body)


# -- what the run wrote, as the launcher read it ----------------------------------------------------

def export_files(listing: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """[(container-relative name, size in bytes)] of local export files, data files only.

    ``listing``: ``(name relative to DIR/blob, size)`` of every file there, ``/``-separated.
    """
    found = []
    for rel, size in listing:
        parts = rel.split("/")
        if "_state" in parts[-2:-1] or parts[-1].endswith(".json") or parts[-1].startswith(".tmp-"):
            continue
        found.append((rel, size))
    return sorted(found)


def count_rows(name: str, data: bytes) -> int | None:
    """Data rows of an export file's bytes (CSV without its header, or Parquet); None if unreadable."""
    try:
        if name.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq
            return pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        return max(0, sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8"), newline=""))) - 1)
    except (OSError, ValueError, ImportError, EOFError):
        return None


def _utc(unix):
    try:
        return datetime.datetime.fromtimestamp(int(unix), datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M")
    except (OverflowError, ValueError, OSError):
        return str(unix)


def export_windows(files: Iterable[tuple[str, int, int | None]]) -> list[ExportWindow]:
    """``[(file, window start, window end, rows, bytes)]`` (times UTC) of ``[(name, size, rows)]``,
    in window order per folder."""
    windows = []
    for rel, size, rows in files:
        m = _WINDOW_NAME.search(rel)
        start, end = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        windows.append((rel.rsplit("/", 1)[0] if "/" in rel else "", start, rel, end, rows, size))
    windows.sort(key=lambda w: (w[0], w[1] if w[1] is not None else -1, w[2]))
    return [(rel, _utc(start) if start is not None else "", _utc(end) if end is not None else "",
             "" if rows is None else rows, size) for _, start, rel, end, rows, size in windows]


# -- the page ------------------------------------------------------------------------------------

def _dead_letter_section(files):
    files = [(name, records) for name, records in files if records]
    if not files:
        return '<p class="empty" id="no-dead-letters">No dead letters: every record was processed.</p>'
    out = []
    for name, records in files:
        reasons = {}
        for r in records:
            error = str(r.get("error", ""))
            entry = reasons.setdefault(error, [0, r.get("source", "")])
            entry[0] += 1
        ranked = sorted(reasons.items(), key=lambda kv: (-kv[1][0], kv[0]))
        rows = [(n, error, source) for error, (n, source) in ranked[:MAX_REASONS]]
        if len(ranked) > MAX_REASONS:
            rows.append((sum(n for _, (n, _) in ranked[MAX_REASONS:]),
                         "%d other reasons" % (len(ranked) - MAX_REASONS), ""))
        out.append('<h3>deadletter/%s: %d record%s</h3>%s'
                   % (html.escape(name), len(records), "" if len(records) == 1 else "s",
                      _table(["records", "reason", "first at"], rows, numeric=(0,))))
    return '<div id="dead-letters">%s</div>' % "".join(out)


def _windows_section(windows):
    if not windows:
        return '<p class="empty">No local export files.</p>'
    rows = sum(w[3] for w in windows if isinstance(w[3], int))
    table = _table(["file", "window start (UTC)", "window end (UTC)", "rows", "bytes"], windows,
                   table_id="export-windows", numeric=(3, 4))
    summary = "%d file%s, %d row%s" % (len(windows), "" if len(windows) == 1 else "s", rows,
                                       "" if rows == 1 else "s")
    return '<details%s><summary>%s</summary>%s</details>' % (
        " open" if len(windows) <= OPEN_WINDOW_ROWS else "", summary, table)


def _day_rows(daily, audiences):
    per_day = {}
    for r in daily:
        entry = per_day.setdefault(r["day"], {}).setdefault(r["audience"], [0, 0])
        entry[0 if r["event"] == "enter" else 1] += r["count"]
    rows = []
    for day in sorted(per_day):
        cells = [day]
        for a in audiences:
            e, x = per_day[day].get(a, [0, 0])
            cells.append(" ".join(t for t in ("+%d" % e if e else "", "\u2212%d" % x if x else "")
                                  if t) or "")
        rows.append(cells)
    return rows


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:1400px}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
#per-day td,#export-windows td{white-space:nowrap}
.figure{font-size:1.4em;font-weight:bold}.empty,.muted{color:#777}
.chart{display:flex;gap:1.5em;align-items:flex-start;width:100%}
.plot{flex:1 1 auto;min-width:0}.plot svg{display:block;width:100%;height:auto}
.legend{list-style:none;margin:0;padding:.4em 0;flex:0 0 auto;font-size:.95em}
.legend li{margin:.25em 0;white-space:nowrap}
.swatch{display:inline-block;width:1.4em;height:.3em;vertical-align:middle;margin-right:.5em}
.outliers{font-size:.95em;color:#444}.outliers ul{margin:.2em 0}
details summary{cursor:pointer;margin:.4em 0}
"""


def _computed_section(computed):
    """The job's computed traits (``summary.json``'s ``computed_traits``), or nothing."""
    if not computed:
        return ""
    rows = [(c["name"], c["computes"], ", ".join(c["read_by"]) or "-",
             ", ".join(c["sent_by"]) or "-") for c in computed]
    return ("<h2>Computed traits</h2>\n"
            + _table(["computed trait", "computes", "read by", "sent by"], rows,
                     table_id="computed") + "\n")


def build_report(summary: Mapping[str, Any], daily: Sequence[DailyCount],
                 files: Iterable[tuple[str, int]] | None = None,
                 dead_letters: Iterable[tuple[str, Sequence[Mapping[str, Any]]]] = (),
                 windows: Sequence[ExportWindow] | None = None) -> str:
    """The page (see the module docstring). ``files``: :func:`export_files` (used when
    ``windows`` is not given: then window rows have no row counts); ``dead_letters``: ``[(name
    under DIR/deadletter, [records])]``; ``windows``: :func:`export_windows`."""
    first, last, outliers = split_outlier_days(daily)
    days, series = clipped_sizes(daily, first, last) if first else ([], {})
    audience_names = list(summary.get("audiences", {})) or sorted({r["audience"] for r in daily})
    day_rows = _day_rows(daily, audience_names)
    work_rows = [(wid, w["workflow"], ", ".join("%s %s" % (k, v) for k, v in w.items()
                                                 if k not in ("workflow", "label")))
                 for wid, w in summary.get("works", {}).items()]
    audience_rows = [(slug, f["enters"], f["exits"]) for slug, f in summary.get("audiences", {}).items()]
    if windows is None:
        windows = [(rel, "", "", "", size) for rel, size in (files or [])]
    range_note = ('<p class="muted">%s to %s, UTC.</p>' % (html.escape(first), html.escape(last))
                  if first else "")
    return """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Activation run report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>%(style)s</style></head><body>
<h1>Activation run report</h1>
<p>Command <b>%(command)s</b>, %(seconds)s s. Records read <span class="figure" id="records">%(read)d</span>,
dead-lettered <span class="figure" id="deadlettered">%(dead)d</span>, outside the time range %(outside)d,
late %(late)d, duplicates %(dups)d.</p>
<h2>Audience sizes over time</h2>
%(range)s
%(chart)s
%(outliers)s
<h2>Enters and exits per audience</h2>
%(audiences)s
%(computed)s<h2>Works</h2>
%(works)s
<h2>Dead letters</h2>
%(dead_letters)s
<h2>Export files per window</h2>
%(windows)s
<h2>Enters and exits per day</h2>
%(days)s
</body></html>
""" % {"style": STYLE, "command": html.escape(summary.get("command", "")),
       "seconds": summary.get("seconds", ""),
       "read": summary.get("records_read", 0), "dead": summary.get("deadlettered", 0),
       "outside": summary.get("outside_time_range", 0),
       "late": summary.get("late", 0), "dups": summary.get("duplicates", 0),
       "range": range_note, "chart": _chart(days, series),
       "outliers": _outliers_note(outliers, first, last),
       "audiences": _table(["audience", "enters", "exits"], audience_rows, numeric=(1, 2)),
       "computed": _computed_section(summary.get("computed_traits") or []),
       "days": ('<p class="muted">+ enters, \u2212 exits, per audience and day (UTC).</p>'
                + _table(["day"] + audience_names, day_rows, table_id="per-day")
                if day_rows else '<p class="empty">none</p>'),
       "works": _table(["work", "workflow", "figures"], work_rows),
       "dead_letters": _dead_letter_section(dead_letters),
       "windows": _windows_section(windows)}
