"""ONNX graphs: the runtime that scores them, the graph passes, and the export and route stages; imports the layers below."""
