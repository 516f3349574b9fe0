"""The --setup_file that Dataflow and Flink workers install from (docs/DEPLOY.md); the project's
metadata, dependencies and packages are in pyproject.toml."""
import setuptools

setuptools.setup()
