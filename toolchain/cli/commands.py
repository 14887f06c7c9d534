"""Every `qtool` command, registered on the group: the console script's entry point."""

from . import graph_commands, kit_commands, measure_commands, model_commands  # noqa: F401  (each registers its commands)
from .app import main

__all__ = ["main"]
