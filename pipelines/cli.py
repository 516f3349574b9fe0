"""What every command shares on its command line: ``--help`` and unknown options.

``--help`` prints the command's usage, a paragraph on what it does, every option on one line with
its help (each help says what the option does and gives an example value), and example command
lines. An option no parser of the command knows is an error naming it and the nearest known option,
``unknown option --strat (did you mean --start?)``: a mistyped option must not be ignored, because
the run would then go ahead without it (no time filter, output in the default directory).

Two kinds of parser:

* :class:`CommandParser`, an ``argparse.ArgumentParser`` for the commands without Beam (validate,
  explain, read_eventhub, the local Event Hubs endpoint);
* :func:`check_pipeline_arguments` for the pipeline commands, whose options are Beam
  ``PipelineOptions``: every option of every Beam options class passes, with the command's own
  classes; the options of the project's other commands do not (``stream --start`` is an error,
  not an ignored filter), although Beam registers every options class of the process.

Errors are :class:`UsageError`; the commands print them as one ``error:`` line and exit with 2.
Both parsers also refuse to run when another installed distribution provides one of the project's
top-level package names (:func:`check_installed_names`, docs/decisions/0005-package-names.md).
"""
import argparse
import difflib
import functools
import re
import sys
from importlib.metadata import packages_distributions
from typing import (TYPE_CHECKING, Callable, Dict, Iterable, List, Mapping, NoReturn, Optional,
                    Sequence, Tuple, Type)

if TYPE_CHECKING:  # at run time Beam is imported where it is used (beam_parse_known)
    from apache_beam.options.pipeline_options import PipelineOptions

HELP_FLAGS = ("-h", "--help")


class UsageError(ValueError):
    """A command line the command cannot run: one line naming the problem."""


#: The top-level packages this project installs (pyproject.toml: ``cdp_activation`` holds core,
#: clients and transforms; ``pipelines`` is the contract's commands), and its distribution's name.
TOP_LEVEL_NAMES = ("cdp_activation", "pipelines")
DISTRIBUTION = "cdp-activation"


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def name_clashes(providers: Optional[Mapping[str, Iterable[str]]] = None) -> Dict[str, List[str]]:
    """``{top-level name: [other distributions that install it]}`` for the project's names, from
    ``providers`` (default: ``importlib.metadata.packages_distributions()``, every distribution
    installed on ``sys.path``)."""
    if providers is None:
        providers = packages_distributions()
    clashes = {}
    for name in TOP_LEVEL_NAMES:
        others = sorted({d for d in providers.get(name, ()) if _normalized(d) != DISTRIBUTION})
        if others:
            clashes[name] = others
    return clashes


@functools.lru_cache(maxsize=1)
def _installed_clashes() -> Dict[str, List[str]]:
    return name_clashes()


def check_installed_names() -> None:
    """Raises :class:`UsageError` when another installed distribution provides a top-level name
    of this project: one of the two would import the other's modules. The installed distributions
    are read once per process (about 0.1 s)."""
    clashes = _installed_clashes()
    if clashes:
        name, others = sorted(clashes.items())[0]
        raise UsageError("the installed distribution %s also provides the top-level package '%s'; "
                         "install this project in a virtualenv of its own"
                         % (", ".join(others), name))


def wants_help(argv: Iterable[str]) -> bool:
    """True when ``argv`` asks for help (before a ``--`` that ends the options)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg in HELP_FLAGS:
            return True
    return False


def _nearest(name, candidates):
    """The known option nearest to ``name`` (``--output-dir`` -> ``--output_dir``), or None."""
    candidates = [c for c in candidates if c.startswith("--")]
    underscored = "--" + name.lstrip("-").replace("-", "_")
    if underscored in candidates:
        return underscored
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.75)
    if not close:
        return None
    # Among the close ones, the fewest typing mistakes first (a swapped pair of letters counts
    # one: --strat is --start, not --state), then difflib's order.
    return min(close, key=lambda c: (_edits(name, c), close.index(c)))


def _edits(a, b):
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
    neighbouring characters, each one edit."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(rows[i - 1][j] + 1, row[j - 1] + 1, rows[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[i - 2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def unknown_option_error(unknown: Iterable[str], preferred: Sequence[str], others: Sequence[str] = (),
                         foreign: Optional[Mapping[str, str]] = None) -> Optional[UsageError]:
    """The error for the first unknown argument of ``unknown`` (as ``parse_known_args`` left them).

    The nearest option is looked for among ``preferred`` (the command's own options) first, then
    ``others`` (Beam's). ``foreign``: ``{option: command}`` of options that belong to another
    command, named in the message.
    """
    for arg in unknown:
        if arg == "--":
            break
        if arg.startswith("-") and len(arg) > 1 and not _is_number(arg):
            name = arg.split("=", 1)[0]
            if foreign and name in foreign:
                return UsageError("unknown option %s (it is an option of %s)"
                                  % (name, foreign[name]))
            nearest = _nearest(name, preferred) or _nearest(name, others)
            return UsageError("unknown option %s%s" % (
                name, " (did you mean %s?)" % nearest if nearest else ""))
        return UsageError("unexpected argument %r: every value follows its option, e.g. "
                          "--input %s (see --help)" % (arg[:80], arg[:80]))
    return None


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _usage_message(message):
    """argparse's error text in this project's words."""
    prefix = "the following arguments are required: "
    if message.startswith(prefix):
        first = message[len(prefix):].split(",")[0].strip()
        return "%s is required (see --help)" % first
    if message.startswith("argument "):
        # "argument --timeout: invalid float value: 'x'" -> "--timeout: invalid float value: 'x'"
        message = message[len("argument "):]
        if "/" in message.split(":", 1)[0]:  # "--from-start/--from_start: ..."
            names, _, rest = message.partition(":")
            message = names.split("/")[-1] + ":" + rest
    return message


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are :class:`UsageError` and whose help is one line per
    option with examples; see the module docstring."""

    def __init__(self, prog: str, description: Optional[str], examples: Iterable[str],
                 usage: Optional[str] = None) -> None:
        super().__init__(prog=prog, description=description, allow_abbrev=False, add_help=False,
                         usage=usage)
        self.examples = list(examples)

    def error(self, message: str) -> NoReturn:
        raise UsageError(_usage_message(message))

    def parse(self, argv: Optional[Sequence[str]]) -> Optional[argparse.Namespace]:
        """The parsed options of ``argv`` (None: ``sys.argv[1:]``); None when help was asked for
        and printed. Raises :class:`UsageError`."""
        argv = list(sys.argv[1:] if argv is None else argv)
        if wants_help(argv):
            sys.stdout.write(self.format_help())
            return None
        check_installed_names()
        # An unknown option is named before a missing one: "--inptu" must not read "--input is
        # required".
        required = [a for a in self._actions if a.required]
        for action in required:
            action.required = False
        try:
            args, unknown = self.parse_known_args(argv)
        finally:
            for action in required:
                action.required = True
        error = unknown_option_error(unknown, option_strings(self))
        if error is not None:
            raise error
        for action in required:
            if getattr(args, action.dest, None) is None:
                raise UsageError("%s is required (see --help)" % _display_name(action).split()[0])
        return args

    def format_help(self) -> str:
        return format_command_help(self.prog, self.usage or _usage_line(self), self.description,
                                   [("Options", option_lines(self))], self.examples)


def option_strings(parser: argparse.ArgumentParser) -> List[str]:
    """Every option string a parser knows (``--config``, ``-h``...)."""
    return [s for action in parser._actions for s in action.option_strings]  # noqa: SLF001


def _usage_line(parser):
    parts = []
    for action in parser._actions:  # noqa: SLF001
        if not action.option_strings:
            continue
        name = _display_name(action)
        parts.append(name if action.required else "[%s]" % name)
    return "python -m %s %s" % (parser.prog.replace("python -m ", ""), " ".join(parts))


def _display_name(action):
    long_names = [s for s in action.option_strings if s.startswith("--")]
    name = long_names[0] if long_names else action.option_strings[0]
    if action.nargs == 0:
        return name
    metavar = action.metavar or action.dest.upper()
    return "%s [%s]" % (name, metavar) if action.nargs == "?" else "%s %s" % (name, metavar)


def option_lines(parser: argparse.ArgumentParser) -> List[Tuple[str, str]]:
    """``[(option with its value, one line of help)]`` for every option of ``parser``."""
    lines = []
    for action in parser._actions:  # noqa: SLF001
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        help_text = " ".join((action.help or "").split())
        if action.required:
            help_text = "Required. " + help_text
        lines.append((_display_name(action), help_text))
    lines.append(("--help", "Print this help and exit."))
    return lines


def format_command_help(prog: str, usage: str, description: Optional[str],
                        sections: Sequence[Tuple[str, Sequence[Tuple[str, str]]]],
                        examples: Sequence[str]) -> str:
    """The help text: usage, description, sections of ``(option, help)`` lines, examples."""
    out = ["usage: %s" % usage, ""]
    if description:
        out += [description.strip(), ""]
    for title, lines in sections:
        out.append("%s:" % title)
        width = min(32, max(len(name) for name, _ in lines) + 2)
        for name, help_text in lines:
            if len(name) + 2 > width:
                out.append("  %s\n  %s  %s" % (name, " " * width, help_text))
            else:
                out.append("  %s%s" % (name.ljust(width), help_text))
        out.append("")
    if examples:
        out.append("Examples:")
        out += ["  %s" % e for e in examples]
        out.append("")
    return "\n".join(out)


def run_command(parse: Callable[[], Optional[argparse.Namespace]],
                body: Callable[[argparse.Namespace], int]) -> int:
    """Runs ``body(args)`` after ``parse()``; a :class:`UsageError` is one line and status 2."""
    try:
        args = parse()
    except UsageError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 2
    if args is None:
        return 0
    return body(args)


# -- the pipeline commands (Beam options) --------------------------------------------------------

#: The Beam options a user of this project meets first; ``--help`` lists them after the command's
#: own. Every other Beam option is accepted too.
BEAM_OPTIONS = (
    ("--runner NAME", "Where the pipeline runs (default DirectRunner; FlinkRunner, PrismRunner, "
                      "DataflowRunner...), e.g. --runner=FlinkRunner"),
    ("--streaming", "Run as a streaming job, needed by a live --input, e.g. --streaming"),
    ("--parallelism N", "Flink: parallelism of the job, e.g. --parallelism 4"),
    ("--flink_master URL", "Flink: the cluster's REST address ([auto]: embedded), e.g. "
                           "--flink_master=localhost:8081"),
    ("--environment_type TYPE", "Portable runners: how Python workers run, e.g. "
                                "--environment_type=LOOPBACK"),
    ("--job_endpoint URL", "PortableRunner: the job service, e.g. --job_endpoint=embed"),
    ("--direct_num_workers N", "DirectRunner: parallel bundles, e.g. --direct_num_workers 2"),
    ("--project ID", "Dataflow: the Google Cloud project, e.g. --project my-project"),
    ("--region REGION", "Dataflow: the region, e.g. --region europe-west1"),
    ("--temp_location URI", "Dataflow: staging and temp files, e.g. --temp_location gs://b/tmp"),
    ("--setup_file FILE", "Dataflow: installs this project on the workers, e.g. "
                          "--setup_file ./setup.py"),
    ("--no_wait_until_finish", "Submit the job and return without waiting for it, e.g. "
                               "--no_wait_until_finish"),
)


def _declared(options_class):
    parser = argparse.ArgumentParser(add_help=False)
    options_class._add_argparse_args(parser)  # noqa: SLF001
    return parser


class _Captured(Exception):
    pass


def beam_parse_known(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(known option strings, unknown arguments)`` of ``argv`` for the parser Beam builds from
    every registered ``PipelineOptions`` class, the one ``PipelineOptions(argv)`` parses with.

    Taken from ``get_all_options``'s own parser (``add_extra_args_fn`` receives it once every
    class has added its options), so it follows what this Beam version registers. A value Beam
    cannot parse (``--progress_seconds=soon``) is a :class:`UsageError`.
    """
    from apache_beam.options.pipeline_options import PipelineOptions
    found = {}

    def capture(parser):
        parser.error = lambda message: (_ for _ in ()).throw(UsageError(_usage_message(message)))
        found["known"] = option_strings(parser)
        found["unknown"] = parser.parse_known_args(argv)[1]
        raise _Captured()

    try:
        PipelineOptions(argv).get_all_options(add_extra_args_fn=capture)
    except _Captured:
        pass
    return found["known"], found["unknown"]


def check_pipeline_arguments(argv: Sequence[str], command: str,
                             command_options: Mapping[str, Sequence[Type["PipelineOptions"]]]) -> None:
    """Raises :class:`UsageError` for the first argument of ``argv`` that is neither an option of
    ``command`` (its classes: ``command_options[command]``) nor one of Beam's, or when the
    project's package names clash (:func:`check_installed_names`)."""
    check_installed_names()
    own = [s for cls in command_options[command] for s in option_strings(_declared(cls))]
    foreign = {}
    for other, classes in command_options.items():
        if other == command:
            continue
        for cls in classes:
            for name in option_strings(_declared(cls)):
                if name not in own:
                    foreign.setdefault(name, other)
    known, unknown = beam_parse_known(argv)
    for arg in argv:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in foreign:
            unknown = [name] + list(unknown)
            break
    error = unknown_option_error(unknown, own, [k for k in known if k not in foreign], foreign)
    if error is not None:
        raise error


def pipeline_help(command: str, usage: str, description: str,
                  command_options: Mapping[str, Sequence[Type["PipelineOptions"]]],
                  examples: Sequence[str]) -> str:
    """``--help`` of a pipeline command: its own options, then the common Beam options."""
    parser = argparse.ArgumentParser(add_help=False)
    for cls in command_options[command]:
        cls._add_argparse_args(parser)  # noqa: SLF001
    return format_command_help(
        "python -m " + command, usage, description,
        [("Options", option_lines(parser)),
         ("Beam options (every standard Beam option is accepted; these are the common ones)",
          list(BEAM_OPTIONS))],
        examples)
