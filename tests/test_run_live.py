"""``./run_local.sh --live`` (emulators/run_live.py) on Prism: enters and exits are printed as they
arrive in the output hub while the generator publishes, and Ctrl-C ends the run with a summary."""
import json
import os
import signal
import subprocess

import pytest

from emulators import run_live
from pipelines import runners
from tests.commands import PY, ROOT


SHORT = """
account: {name: acme, aid: 1234}
audiences:
  - {id: a1, slug: recent_buyers, condition: {event: purchase, within: 5s}}
works:
  - id: w-eh
    workflow: eventhub_audience_export
    config: {connection_string: "${LIVE_OUTPUT_CONNECTION_STRING}"}
"""


def test_the_live_example_config_is_valid_and_has_short_windows():
    env = dict(os.environ, LIVE_OUTPUT_CONNECTION_STRING=(
        "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=k;SharedAccessKey=a2V5;"
        "EntityPath=audiences;UseDevelopmentEmulator=true"), PYTHONPATH=ROOT)
    proc = subprocess.run([PY, "-m", "pipelines.validate", "--config", os.path.join(
        ROOT, "examples", "live.yaml")], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(os.path.join(ROOT, "examples", "live.yaml"), encoding="utf-8") as fh:
        assert "within: 30s" in fh.read()


def test_sample_events_are_current_and_of_every_kind():
    import random
    rng = random.Random(3)
    events = [run_live.sample_event(rng, n, 50, 1_790_000_000.0) for n in range(2000)]
    assert {e["event"] for e in events} == {"purchase", "add_to_cart", "profile", "page_view"}
    assert {e["ts"] for e in events} == {"2026-09-21T14:13:20.000000Z"}
    assert len({e["event_id"] for e in events}) == 2000


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_live_prints_enters_and_exits_as_they_arrive_and_a_summary_on_ctrl_c(tmp_path):
    if not os.access(runners.prism_binary(), os.X_OK):
        pytest.fail("Prism is not installed: run %s" % runners.INSTALL_PRISM, pytrace=False)
    (tmp_path / "config.yaml").write_text(SHORT)
    proc = subprocess.Popen(
        [PY, "-m", "emulators.run_live", "--config", str(tmp_path / "config.yaml"),
         "--output_dir", str(tmp_path / "out"), "--rate", "20", "--users", "30", "--warmup", "0"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        # Waits on what arrives in the output hub, as printed; the test's timeout bounds it.
        for line in proc.stdout:
            lines.append(line)
            if " exit " in line and "recent_buyers" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    printed = "".join(lines) + rest
    assert proc.returncode == 0, printed + err
    assert " enter recent_buyers " in printed and " exit  recent_buyers " in printed
    assert "Summary (live" in rest and "exit lateness (due time -> message arrived): p50" in rest
    with open(tmp_path / "out" / "live_summary.json", encoding="utf-8") as fh:
        summary = json.load(fh)
    assert summary["published"] > 0 and summary["messages"] > 0
    assert summary["audiences"]["recent_buyers"]["exit"] >= 1
    assert summary["exit_lateness_s"]["count"] >= 1
    with open(tmp_path / "out" / "pipeline.log", encoding="utf-8") as fh:
        assert "live input: running on PrismRunner" in fh.read()
