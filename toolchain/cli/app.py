"""The `qtool` command group, its shared help texts, and how a command runs a library function (errors as one line)."""

from __future__ import annotations


import click
from qtool_runtime.errors import one_line_errors
from ..core.atomic import sigterm_as_exit



POSITIVE = click.IntRange(min=1)


CONFIG_HELP = ("Length configuration: 'full' or one kept-token count per layer, e.g. 315,251,242,159,142,33; "
               "'skip' leaves a layer out, e.g. 315,251,skip,159,142,33 (repeatable).")


VARIANT_HELP = ("Drop-and-Restore variant: 'qtool' (significance over real queries; a dropped token keeps its "
                "post-attention state), 'match' (the question's tokens first, then context tokens near the question's "
                "words, then the rest by attention; trained by `qtool train --variant match`), 'answer' (as match, but "
                "the rest by the QA head's answer score; runs a match-trained model) "
                "or 'lat' (LAT's code: over all queries, [CLS] always kept, a dropped token keeps its last layer "
                "output); docs/concepts.md. Default: what `qtool train` recorded in the model folder, else qtool.")


NEIGHBOURS_HELP = ("The document workload: widen each context with this many neighbouring paragraphs of the same article "
                   "on each side, so windows are full of real tokens (0: SQuAD's own paragraphs).")


ROOT_HELP = (" New, empty, or a folder of qtool artifacts: artifacts of the same name are replaced, nothing else is "
             "touched; never the model or inside an artifact.")


def expected_errors() -> tuple[type[BaseException], ...]:
    """The error types that mean bad input: qtool's one base class (toolchain and kit) and file errors."""

    return one_line_errors()


def run(fn, *args, **kwargs):
    """Call a library function; expected errors become one clear line, anything else keeps its traceback.

    SIGTERM during the call unwinds like Ctrl-C, so staging folders and temporary directories are removed.
    """

    try:
        with sigterm_as_exit():
            return fn(*args, **kwargs)
    except expected_errors() as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qtool")
def main() -> None:
    """Train, search, export, quantize and verify Drop-and-Restore QA models.

    Typical path: qtool train -> qtool search -> qtool export -> qtool quantize [-> qtool route] -> qtool verify
    (beside qtool standard, the standard recipe), then qtool answer or qtool serve; qtool bench runs the build and
    the comparison in one go. A first run without training: README.md.
    """
