import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Fixtures of the integration suites live beside their tests; listing them here makes them
# available to every test module.
pytest_plugins = [name for name in ("tests.fixtures_eventhubs", "tests.fixtures_azurite",
                                    "tests.fixtures_alerts")
                  if os.path.exists(os.path.join(ROOT, *name.split(".")) + ".py")]
