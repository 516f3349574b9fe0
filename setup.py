"""Installs the activation pipeline; also the --setup_file that Dataflow workers install from."""
import setuptools

REQUIRED = [
    # 2.62.0: the newest Beam whose Flink job server Maven serves here (docs/RUNNERS.md); a Python
    # SDK must not run against another version's job server.
    "apache-beam==2.62.0",
    "azure-eventhub>=5.15,<6",
    "azure-storage-blob>=12.31,<13",
    "pyarrow>=14,<26",       # Beam pins pyarrow (2.62: below 17)
    "PyYAML>=6",
    "orjson>=3.9",           # fast JSON decoding of input lines (stdlib json is the fallback)
    "jsonnet>=0.20",
    "zstandard>=0.18",       # compressed runs of message lines (also a dependency of Beam)
]
TEST = ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "aiosmtpd>=1.4",
        # Azure's own Blob checkpoint store: the tests check that it and the pipeline's
        # checkpoints (clients/checkpoints.py) read each other's positions.
        "azure-eventhub-checkpointstoreblob>=1.2,<2",
        "ruff>=0.6",          # the linter the test command runs first (pyproject.toml)
        "pillow>=10"]         # the report test reads its Chromium screenshot

setuptools.setup(
    name="cdp-activation",
    version="0.1.0",
    description="Apache Beam pipeline for customer-data activation: audiences with event-time "
                "timers to Azure Event Hubs, system-event alerts, and Azure Blob exports.",
    python_requires=">=3.10",
    # The runtime only: the local Event Hubs endpoint (emulators/), the bench and the tests run
    # from a checkout and are not installed (nor staged to Dataflow workers).
    packages=setuptools.find_packages(include=["core", "core.*", "clients", "clients.*",
                                               "pipelines", "pipelines.*", "transforms",
                                               "transforms.*"]),
    package_data={"": ["*.yaml", "*.json"]},
    data_files=[("examples", ["examples/config.yaml"])],
    install_requires=REQUIRED,
    extras_require={"test": TEST},
)
