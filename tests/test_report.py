"""The run report: built from a real run, opened in a real headless browser (Debian's chromium)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from core.report import audience_sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_audience_sizes_accumulate_and_fill_empty_days():
    daily = [{"day": "2026-01-01", "audience": "a", "event": "enter", "count": 3},
             {"day": "2026-01-03", "audience": "a", "event": "exit", "count": 2}]
    days, series = audience_sizes(daily)
    assert days == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert series == {"a": [("2026-01-01", 3), ("2026-01-02", 3), ("2026-01-03", 1)]}


@pytest.mark.slow
def test_report_loads_in_a_headless_browser_and_shows_the_chart(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed: the test command installs it (apt-get install chromium)"
    from bench.make_data import write
    write(str(tmp_path / "events.jsonl"), 3000, 100, 10)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "pipelines.replay", "--config", os.path.join(ROOT, "bench", "config.yaml"),
                             "--input", str(tmp_path / "events.jsonl"), "--output_dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    page = "file://" + str(out / "report.html")
    profile = tempfile.mkdtemp()
    dom = subprocess.run([chromium] + CHROMIUM_FLAGS + ["--user-data-dir=" + profile, "--dump-dom", page],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    assert 'id="sizes-chart"' in rendered
    summary = json.loads((out / "summary.json").read_text())
    drawn = rendered.count('class="series"')
    assert drawn == len([a for a, f in summary["audiences"].items() if f["enters"] or f["exits"]]) > 0
    assert '<span class="figure" id="records">3000</span>' in rendered
    shot = tmp_path / "report.png"
    subprocess.run([chromium] + CHROMIUM_FLAGS + ["--user-data-dir=" + profile, "--window-size=1000,900",
                                                 "--screenshot=" + str(shot), page],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20000  # a blank page compresses to a few kB
