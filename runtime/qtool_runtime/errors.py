"""The one base of every error qtool raises for input a user can fix, shared by the kit and the toolchain.

A command line catches `QtoolError` (and the operating system's file errors) and prints one `Error:` line;
anything else is a bug and keeps its traceback. A new error type joins by deriving from it.
"""

from __future__ import annotations

# What a command line shows as one line besides QtoolError: a path that is missing, not a folder, or not ours.
OS_INPUT_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class QtoolError(Exception):
    """Bad input (a file, a model, a number, a request) found and described in one line."""


def one_line_errors() -> tuple[type[BaseException], ...]:
    """The error types a command line turns into one `Error:` line."""
    return (QtoolError, *OS_INPUT_ERRORS)
