"""qtool: length-adaptive (Drop-and-Restore) transformers to small, fast INT8 ONNX graphs."""

__version__ = "0.1.0"
