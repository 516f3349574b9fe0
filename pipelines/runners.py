"""Which Beam runner a pipeline command runs on, and where it finds the runners the project installs.

* A live (unbounded) input with no ``--runner`` runs on Prism, Beam's local portable runner, which
  follows the source's watermark: delayed exits, Blob window closes and the 24 h dedupe happen
  while input still flows. Any other input with no ``--runner`` stays on Beam's default.
* Prism is the binary ``scripts/install_runners.sh prism`` builds from Beam's Go module at the
  installed apache-beam's version, in ``.tools/prism/v<version>/prism``. When Prism is the runner
  and ``--prism_location`` is not given, that binary is passed as ``--prism_location``; when it is
  missing, the run stops with one line saying how to install it (Beam would otherwise try to
  download a release binary from GitHub at run time).

No Beam import at module level: the launcher reads this before building a pipeline.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRISM_RUNNER = "PrismRunner"
INSTALL_PRISM = "scripts/install_runners.sh prism"


class RunnerMissingError(RuntimeError):
    """A runner the run needs is not installed; the message says how to install it."""


def beam_version() -> str:
    from apache_beam.version import __version__
    return __version__


def prism_binary(version: str = None, root: str = ROOT) -> str:
    """Where ``scripts/install_runners.sh prism`` puts Prism for apache-beam ``version``."""
    return os.path.join(root, ".tools", "prism", "v" + (version or beam_version()), "prism")


def is_prism(runner) -> bool:
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner else ""
    return name.lower().rsplit(".", 1)[-1] in ("prismrunner", "prism")


def choose_runner(options, live: bool, binary: str = None) -> str:
    """Sets the runner of ``options`` (Beam ``PipelineOptions``) for this run and returns its name.

    ``live``: the input is unbounded. Raises :class:`RunnerMissingError` when Prism is the runner,
    no ``--prism_location`` is given and the project's Prism binary is not installed.
    """
    from apache_beam.options.pipeline_options import PrismRunnerOptions, StandardOptions
    standard = options.view_as(StandardOptions)
    if standard.runner is None and live:
        standard.runner = PRISM_RUNNER
    if is_prism(standard.runner):
        prism = options.view_as(PrismRunnerOptions)
        if not prism.prism_location:
            binary = binary or prism_binary()
            if not os.access(binary, os.X_OK):
                raise RunnerMissingError(
                    "Prism %s is not installed (%s missing): run %s, or name another runner "
                    "with --runner" % ("v" + beam_version(), os.path.relpath(binary, ROOT),
                                       INSTALL_PRISM))
            prism.prism_location = binary
    runner = standard.runner
    return runner if isinstance(runner, str) or runner is None else type(runner).__name__
