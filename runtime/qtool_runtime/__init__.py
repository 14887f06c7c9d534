"""qtool-runtime: answer questions from a qtool artifact with onnxruntime, tokenizers and numpy only.

    from qtool_runtime import Artifact
    kit = Artifact.open("graphs/doc/int8-315-251-242-159-142-33-answer")
    kit.answer("Who wrote it?", context)   # Answer(text, score, start, end), offsets into the context
"""

from .errors import QtoolError
from .contract import MenuEntry, parse_config
from .kit import (Answer, Artifact, ArtifactError, ConfigError, InputError, KitError, OptionError, Windows, check_manifest,
                  read_text_file)
from .menu import MenuTimes
from .spans import Span, best_span

__version__ = "0.1.0"
__all__ = ["Answer", "Artifact", "ArtifactError", "ConfigError", "InputError", "MenuEntry", "MenuTimes", "KitError", "OptionError",
           "Span", "Windows", "best_span", "QtoolError", "check_manifest", "parse_config", "read_text_file"]
