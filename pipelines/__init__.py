"""Command-line pipelines: ``stream`` (state and timers), ``replay`` (batch), and tools."""
import logging


class _DropImportNoise(logging.Filter):
    """Beam warns about optional GCP client libraries on import; irrelevant to this project."""

    def filter(self, record):
        return "apitools not found" not in record.getMessage()


# A handler on root before Beam is imported stops logging.warning() from calling basicConfig()
# itself; the pipelines configure logging properly (force=True) once their flags are known.
_bootstrap = logging.StreamHandler()
_bootstrap.addFilter(_DropImportNoise())
if not logging.getLogger().handlers:
    logging.getLogger().addHandler(_bootstrap)
