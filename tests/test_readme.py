"""README.md: its size limit, and its job config example is a valid config."""
import os
import re

import yaml

from cdp_activation.core.config import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def test_the_readme_stays_within_15000_bytes():
    assert os.path.getsize(README) <= 15000


def test_the_readmes_minimal_job_is_a_valid_config():
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    job = [b for b in blocks if b.startswith("account:")]
    assert len(job) == 1
    config = parse_config(yaml.safe_load(job[0]), environ={"EVENTHUB_CONNECTION_STRING": "x"})
    assert config.audiences.computed.names == ["spend_30d"]
    assert config.works[0].settings.computed_fields == ["spend_30d"]
