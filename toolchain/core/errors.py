"""Errors the user can fix. Every one derives from `qtool_runtime.errors.QtoolError`, the base the kit shares,
so the CLI catches one type and shows one `Error:` line; anything else, a bug, keeps its traceback.

`InputError` is for bad arguments and data slices (a wrong number, an offset past the data); stage-specific
failures have their own types (ExportError, QuantizationError, SquadFormatError, ...), all on this base.
"""

from qtool_runtime.errors import QtoolError

__all__ = ["InputError", "QtoolError"]


class InputError(QtoolError, ValueError):
    """An argument or data slice that cannot work, found before the work starts."""
