"""``out/report.html``: a self-contained page about a run (no scripts, no network).

Audience sizes over time (a line chart in inline SVG), enters and exits per day, export files per
work and window, and the dead-letter count. Built from what the run wrote: ``summary.json``,
``audiences_daily.jsonl`` and the local export directory. Pure: the launcher reads those and
writes the page (``pipelines.common.write_report``), on whatever file system ``--output_dir`` is.
"""
import html

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]


def audience_sizes(daily):
    """{audience: [(day, members at the end of that day)]} from daily enter/exit counts."""
    seen = sorted({r["day"] for r in daily})
    days = []
    if seen:  # every day from the first to the last, so the time axis is proportional
        import datetime
        day = datetime.date.fromisoformat(seen[0])
        last = datetime.date.fromisoformat(seen[-1])
        # Bounded: extreme but valid dates (year 1, year 9999) must not make the report walk or
        # overflow; beyond ten years only the days with activity are plotted.
        if (last - day).days > 3660:
            days = list(seen)
        else:
            while day <= last:
                days.append(day.isoformat())
                if day == datetime.date.max:
                    break
                day += datetime.timedelta(days=1)
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


def _chart(days, series, width=900, height=320, pad=50):
    if not days:
        return '<p class="empty">No audience changes in this run.</p>'
    top = max([1] + [size for points in series.values() for _, size in points])
    step = (width - 2 * pad) / max(1, len(days) - 1)

    def x(i):
        return pad + i * step

    def y(v):
        return height - pad - (height - 2 * pad) * v / top

    parts = ['<svg id="sizes-chart" role="img" aria-label="Audience sizes over time" '
             'xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">'
             % (width, height, width, height),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#444"/>' % (pad, height - pad, width - pad, height - pad),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#444"/>' % (pad, pad, pad, height - pad),
             '<text x="%d" y="%d" font-size="11" text-anchor="end">%d</text>' % (pad - 4, pad + 4, top),
             '<text x="%d" y="%d" font-size="11" text-anchor="end">0</text>' % (pad - 4, height - pad + 4),
             '<text x="%d" y="%d" font-size="11">%s</text>' % (pad, height - pad + 16, html.escape(days[0])),
             '<text x="%d" y="%d" font-size="11" text-anchor="end">%s</text>'
             % (width - pad, height - pad + 16, html.escape(days[-1]))]
    for n, (audience, points) in enumerate(series.items()):
        color = COLORS[n % len(COLORS)]
        path = " ".join("%s%.1f,%.1f" % ("M" if i == 0 else "L", x(i), y(v)) for i, (_, v) in enumerate(points))
        parts.append('<path class="series" data-audience="%s" d="%s" fill="none" stroke="%s" stroke-width="2"/>'
                     % (html.escape(audience), path, color))
        parts.append('<text x="%d" y="%d" font-size="12" fill="%s">%s</text>'
                     % (pad + 10, pad + 14 * (n + 1), color, html.escape(audience)))
    parts.append("</svg>")
    return "\n".join(parts)


def _table(headers, rows):
    head = "".join("<th>%s</th>" % html.escape(str(h)) for h in headers)
    body = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % html.escape(str(c)) for c in row) for row in rows)
    return "<table><thead><tr>%s</tr></thead><tbody>%s</tbody></table>" % (head, body)


def export_files(listing):
    """[(container-relative name, size in bytes)] of local export files, data files only.

    ``listing``: ``(name relative to DIR/blob, size)`` of every file there, ``/``-separated.
    """
    found = []
    for rel, size in listing:
        parts = rel.split("/")
        if "_state" in parts[-2:-1] or parts[-1].endswith(".json"):
            continue
        found.append((rel, size))
    return sorted(found)


def build_report(summary, daily, files):
    days, series = audience_sizes(daily)
    per_day = {}
    for r in daily:
        per_day.setdefault((r["day"], r["audience"]), {"enter": 0, "exit": 0})[r["event"]] += r["count"]
    day_rows = [(day, audience, c["enter"], c["exit"]) for (day, audience), c in sorted(per_day.items())]
    work_rows = [(wid, w["workflow"], ", ".join("%s %s" % (k, v) for k, v in w.items()
                                                 if k not in ("workflow", "label")))
                 for wid, w in summary.get("works", {}).items()]
    audience_rows = [(slug, f["enters"], f["exits"]) for slug, f in summary.get("audiences", {}).items()]
    return """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Activation run report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.figure{font-size:1.4em;font-weight:bold}.empty{color:#777}
</style></head><body>
<h1>Activation run report</h1>
<p>Command <b>%(command)s</b>, %(seconds)s s. Records read <span class="figure" id="records">%(read)d</span>,
dead-lettered <span class="figure" id="deadlettered">%(dead)d</span>, late %(late)d, duplicates %(dups)d.</p>
<h2>Audience sizes over time</h2>
%(chart)s
<h2>Enters and exits per audience</h2>
%(audiences)s
<h2>Enters and exits per day</h2>
%(days)s
<h2>Works</h2>
%(works)s
<h2>Export files per window</h2>
%(files)s
</body></html>
""" % {"command": html.escape(summary.get("command", "")), "seconds": summary.get("seconds", ""),
       "read": summary.get("records_read", 0), "dead": summary.get("deadlettered", 0),
       "late": summary.get("late", 0), "dups": summary.get("duplicates", 0),
       "chart": _chart(days, series),
       "audiences": _table(["audience", "enters", "exits"], audience_rows),
       "days": _table(["day", "audience", "enters", "exits"], day_rows) if day_rows else
       '<p class="empty">none</p>',
       "works": _table(["work", "workflow", "figures"], work_rows),
       "files": _table(["file", "bytes"], files) if files else '<p class="empty">no local export files</p>'}
