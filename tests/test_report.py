"""The run report: built from a real run, opened in a real headless browser (Debian's chromium)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from cdp_activation.core.report import COLORS, audience_sizes, clipped_sizes, split_outlier_days

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_audience_sizes_accumulate_and_fill_empty_days():
    daily = [{"day": "2026-01-01", "audience": "a", "event": "enter", "count": 3},
             {"day": "2026-01-03", "audience": "a", "event": "exit", "count": 2}]
    days, series = audience_sizes(daily)
    assert days == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert series == {"a": [("2026-01-01", 3), ("2026-01-02", 3), ("2026-01-03", 1)]}


def test_days_far_from_the_rest_are_named_not_drawn():
    daily = [{"day": "2026-11-01", "audience": "a", "event": "enter", "count": 3},
             {"day": "2026-11-20", "audience": "a", "event": "exit", "count": 1},
             {"day": "1999-01-01", "audience": "a", "event": "enter", "count": 1},
             {"day": "10000-01-02", "audience": "b", "event": "exit", "count": 2}]
    first, last, outliers = split_outlier_days(daily)
    assert (first, last) == ("2026-11-01", "2026-11-20")
    assert outliers == [("1999-01-01", [("a", 1, 0)]), ("10000-01-02", [("b", 0, 2)])]
    days, series = clipped_sizes(daily, first, last)
    assert len(days) == 20 and days[0] == "2026-11-01" and days[-1] == "2026-11-20"
    # the enter of 1999 counts in the size; the exit of the year 10000 is after the chart
    assert series["a"][0] == ("2026-11-01", 4) and series["a"][-1] == ("2026-11-20", 3)
    assert series["b"][-1] == ("2026-11-20", 0)


def _series_extent(png_path, colors):
    """(leftmost, rightmost) x of pixels drawn in one of ``colors`` ("#rrggbb"), and the width."""
    from PIL import Image
    image = Image.open(png_path).convert("RGB")
    wanted = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in colors]
    width, height = image.size
    pixels = image.load()
    xs = [x for y in range(0, height, 2) for x in range(width)
          if any(sum(abs(a - b) for a, b in zip(pixels[x, y], w)) < 40 for w in wanted)]
    return min(xs), max(xs), width


@pytest.mark.slow
def test_report_loads_in_a_headless_browser_and_shows_the_chart(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed: the test command installs it (apt-get install chromium)"
    data = tmp_path / "events.jsonl"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "make_sample_data.py"), "--out", str(data)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    with open(data, "ab") as fh:  # a record dated 9999 (an outlier) and a line that is not UTF-8
        fh.write(b'{"event_id":"far","user_id":"cust-00005","event":"email_open",'
                 b'"ts":"9999-12-20T23:00:00Z","properties":{"subject":"Sale now"}}\n'
                 b'{"user_id":"caf\xe9","event":"view","ts":"2026-11-20T10:00:00Z"}\n')
    out = tmp_path / "out"
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = subprocess.run([sys.executable, "-m", "pipelines.replay", "--config",
                             os.path.join(ROOT, "examples", "config.yaml"), "--input", str(data),
                             "--output_dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TMPDIR=str(temp)))
    # The export's window limit turns the record of 9999 into a dead letter: the work failed.
    assert result.returncode == 1 and "record far" in result.stderr, result.stderr
    # Nothing empty or temporary is left: no empty file in out/, no folder in the temp directory.
    assert [p for p in out.rglob("*") if p.is_file() and not p.stat().st_size] == []
    assert [p for p in out.rglob(".tmp-*")] == [] and os.listdir(temp) == []
    summary = json.loads((out / "summary.json").read_text())

    page = "file://" + str(out / "report.html")
    profile = tempfile.mkdtemp()
    dom = subprocess.run([chromium] + CHROMIUM_FLAGS + ["--user-data-dir=" + profile, "--dump-dom", page],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    assert '<span class="figure" id="records">%d</span>' % summary["records_read"] in rendered
    # The chart: a series per audience that changed, axis titles, the legend outside the SVG.
    chart = rendered[rendered.index('<svg id="sizes-chart"'):rendered.index("</svg>")]
    drawn = chart.count('class="series"')
    assert drawn == len([a for a, f in summary["audiences"].items() if f["enters"] or f["exits"]]) > 0
    assert "Day (UTC)" in chart and "Members at the end of the day" in chart
    legend = rendered[rendered.index('<ul class="legend" id="legend">'):]
    assert 'id="legend"' not in chart and all(a in legend for a in summary["audiences"])
    # Its time range is the data's; the days of the record of 9999 are named below it.
    ticks = [t.split(">")[1].split("<")[0] for t in chart.split('class="x-tick"')[1:]]
    assert ticks[0] == "2026-11-01" and ticks[-1] == "2026-12-15"
    outliers = rendered[rendered.index('id="outliers"'):]
    assert "9999-12-20: dormant \u22121, newsletter_engaged +1" in outliers
    # Dead letters: the input's (with the line that is not UTF-8) and the export's.
    dead = rendered[rendered.index('id="dead-letters"'):]
    assert "deadletter/input.jsonl: 7 records" in dead and "not UTF-8" in dead
    assert "deadletter/w-blob.jsonl: 1 record<" in dead and "max_windows_per_run" in dead
    # Export windows with their times and row counts, adding up to the summary's.
    table = rendered[rendered.index('id="export-windows"'):]
    table = table[:table.index("</table>")]
    rows = [r.split("<td")[1:] for r in table.split("<tr>")[2:]]
    assert len(rows) == summary["works"]["w-blob"]["files"] == 120
    cells = [[c.split(">", 1)[1].split("</td")[0] for c in r] for r in rows]
    assert cells[0][0].endswith("_1793512800_1793534400.csv")
    assert cells[0][1:3] == ["2026-11-01 06:00", "2026-11-01 12:00"]
    assert sum(int(c[3]) for c in cells) == summary["works"]["w-blob"]["rows"]

    shot = tmp_path / "report.png"
    subprocess.run([chromium] + CHROMIUM_FLAGS + ["--user-data-dir=" + profile, "--window-size=1280,900",
                                                 "--hide-scrollbars", "--screenshot=" + str(shot), page],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20000  # a blank page compresses to a few kB
    # The chart uses the page: its lines span most of the window's width, legend beside it.
    left, right, width = _series_extent(shot, COLORS[:6])
    assert right - left > 0.6 * width, (left, right, width)
