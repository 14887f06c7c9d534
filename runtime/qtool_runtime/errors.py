"""The one base of every error qtool raises for input a user can fix, shared by the kit and the toolchain.

A command line catches `QtoolError` (and the operating system's file errors) and prints one `Error:` line;
anything else is a bug and keeps its traceback. A new error type joins by deriving from it.
"""

from __future__ import annotations

# What a command line shows as one line besides QtoolError: a path that is missing, not a folder, or not ours.
OS_INPUT_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class QtoolError(Exception):
    """Bad input (a file, a model, a number, a request) found and described in one line."""


class KitError(QtoolError, ValueError):
    """Base of every error the kit raises on bad input: one line that says what is wrong."""


class ArtifactError(KitError):
    """An artifact folder that is missing, altered, or whose manifest is not of the expected shape."""


class InputError(KitError):
    """A question or context the artifact cannot answer (empty, or a question too long for a window)."""


class ConfigError(KitError):
    """A configuration the artifact cannot run: not parseable, not on its menu, or asked of a graph of one
    configuration."""


class OptionError(KitError):
    """An operational setting (threads, batch size, waits, body size, latency target, budget) outside its bounds."""


def shown(value: object, limit: int = 60) -> str:
    """A value as a one-line message quotes it: its repr (lone surrogates escaped), cut to `limit` characters.
    Never raises: an int past Python's digit limit or a list nested past the recursion limit says what it is."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"({type(value).__name__} too large to print)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line_errors() -> tuple[type[BaseException], ...]:
    """The error types a command line turns into one `Error:` line."""
    return (QtoolError, *OS_INPUT_ERRORS)
