"""The one error type for bad arguments and data slices that the user can fix (a wrong number, an
offset past the data, a sampler that does not exist). Stage-specific failures have their own types
(ExportError, QuantizationError, SquadFormatError, ...); the CLI shows all of them as one `Error:` line
and lets anything else, a bug, keep its traceback."""


class InputError(ValueError):
    """An argument or data slice that cannot work, found before the work starts."""
