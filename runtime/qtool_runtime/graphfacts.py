"""What an ONNX graph says about itself, read from its bytes without onnx or torch (the kit needs neither).

A manifest states numbers the kit acts on: the opset (which onnxruntime runs it right), a routed graph's
threshold (which windows may share a batch), the positions. The graph holds the truth, so the kit reads it
here and refuses a manifest that disagrees. ONNX files are protobuf; this walks only the fields it needs
(onnx.proto field numbers below) and skips every weight by its length, so a 200 MB graph reads in well
under a second from a memory map, without copying it.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import ArtifactError

# onnx.proto field numbers (stable since ONNX 1.0)
MODEL_GRAPH, MODEL_OPSET = 7, 8
OPSET_DOMAIN, OPSET_VERSION = 1, 2
GRAPH_NODE, GRAPH_INITIALIZER = 1, 5
NODE_INPUT, NODE_OUTPUT, NODE_OP_TYPE, NODE_ATTRIBUTE = 1, 2, 4, 5
ATTRIBUTE_GRAPH, ATTRIBUTE_GRAPHS = 6, 11
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_INT64_DATA, TENSOR_NAME, TENSOR_RAW_DATA = 1, 2, 7, 8, 9
INT64 = 7  # TensorProto.INT64
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
DEFAULT_DOMAINS = ("", "ai.onnx")
# Initializer names of the embedding tables (BERT, RoBERTa, DistilBERT exports; quantized copies add a suffix).
WORD_TABLE, POSITION_TABLE = "word_embeddings", "position_embeddings"


class GraphFormatError(ArtifactError):
    """Bytes that are not the ONNX protobuf this reader expects."""


@dataclass(frozen=True)
class GraphFacts:
    """What the graph states: its default-domain opset, a routed graph's threshold (0: not routed: no top-level
    If on LessOrEqual(longest window, constant)), and the rows of its word and position tables (None: not found)."""

    opset: int | None
    route_threshold: int
    vocab_rows: int | None
    position_rows: int | None


@dataclass
class _Tensor:
    dims: list[int]
    data_type: int = 0
    values: list[int] | None = None  # small int64 tensors only


@dataclass
class _Graph:
    nodes: list[tuple[str, list[str], list[str]]]  # (op_type, inputs, outputs), this level only
    initializers: dict[str, _Tensor]
    tables: dict[str, list[int]]  # embedding-table rows found at this level and in every subgraph


def read_graph_facts(path: str | Path) -> GraphFacts:
    """Read `path` (an ONNX model file); GraphFormatError if it is not one."""
    with open(path, "rb") as fh:
        try:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _model_facts(buf, 0, len(buf))
        except (ValueError, IndexError, RecursionError) as exc:  # an empty file, a truncated or foreign one
            raise GraphFormatError(f"{path} is not an ONNX model this kit can read: {exc}") from None


def _model_facts(buf, start: int, end: int) -> GraphFacts:
    opset, graph = None, None
    for field, wire, a, b in _fields(buf, start, end):
        if field == MODEL_OPSET and wire == LENGTH:
            domain, version = _opset_entry(buf, a, b)
            if domain in DEFAULT_DOMAINS:
                opset = version
        elif field == MODEL_GRAPH and wire == LENGTH:
            graph = _graph(buf, a, b)
    if graph is None:
        raise GraphFormatError("the model holds no graph")
    rows = {name: min(found) if found else None for name, found in graph.tables.items()}
    return GraphFacts(opset, _route_threshold(graph), rows[WORD_TABLE], rows[POSITION_TABLE])


def _route_threshold(graph: _Graph) -> int:
    """The constant a top-level If compares the longest window with (toolchain.graph.route.compose): 0 if none."""
    made_by = {out: (op, inputs) for op, inputs, outputs in graph.nodes for out in outputs}
    for op, inputs, _ in graph.nodes:
        if op != "If" or not inputs:
            continue
        producer = made_by.get(inputs[0])
        if producer and producer[0] == "LessOrEqual" and len(producer[1]) == 2:
            tensor = graph.initializers.get(producer[1][1])
            if tensor and tensor.values and len(tensor.values) == 1:
                return tensor.values[0]
    return 0


def _opset_entry(buf, start: int, end: int) -> tuple[str, int]:
    domain, version = "", 0
    for field, wire, a, b in _fields(buf, start, end):
        if field == OPSET_DOMAIN and wire == LENGTH:
            domain = _text(buf, a, b)
        elif field == OPSET_VERSION and wire == VARINT:
            version = a
    return domain, version


def _graph(buf, start: int, end: int) -> _Graph:
    graph = _Graph([], {}, {WORD_TABLE: [], POSITION_TABLE: []})
    for field, wire, a, b in _fields(buf, start, end):
        if wire != LENGTH:
            continue
        if field == GRAPH_NODE:
            graph.nodes.append(_node(buf, a, b, graph.tables))
        elif field == GRAPH_INITIALIZER:
            name, tensor = _tensor(buf, a, b)
            graph.initializers[name] = tensor
            for table, rows in graph.tables.items():
                if table in name and len(tensor.dims) == 2:
                    rows.append(tensor.dims[0])
    return graph


def _node(buf, start: int, end: int, tables: dict[str, list[int]]) -> tuple[str, list[str], list[str]]:
    """(op_type, inputs, outputs); the tables of its subgraphs (If branches, Loop bodies) join `tables`."""
    op, inputs, outputs = "", [], []
    for field, wire, a, b in _fields(buf, start, end):
        if wire != LENGTH:
            continue
        if field == NODE_INPUT:
            inputs.append(_text(buf, a, b))
        elif field == NODE_OUTPUT:
            outputs.append(_text(buf, a, b))
        elif field == NODE_OP_TYPE:
            op = _text(buf, a, b)
        elif field == NODE_ATTRIBUTE:
            for sub in _subgraphs(buf, a, b):
                for table, rows in sub.tables.items():
                    tables[table].extend(rows)
    return op, inputs, outputs


def _subgraphs(buf, start: int, end: int) -> Iterator[_Graph]:
    for field, wire, a, b in _fields(buf, start, end):
        if field in (ATTRIBUTE_GRAPH, ATTRIBUTE_GRAPHS) and wire == LENGTH:
            yield _graph(buf, a, b)


def _tensor(buf, start: int, end: int) -> tuple[str, _Tensor]:
    """An initializer's name, dims and (for a small int64 tensor) its values; its weights are skipped."""
    name, tensor, raw, ints = "", _Tensor([]), None, []
    for field, wire, a, b in _fields(buf, start, end):
        if field == TENSOR_NAME and wire == LENGTH:
            name = _text(buf, a, b)
        elif field == TENSOR_DATA_TYPE and wire == VARINT:
            tensor.data_type = a
        elif field in (TENSOR_DIMS, TENSOR_INT64_DATA):
            values = _varints(buf, a, b) if wire == LENGTH else [a]  # packed or one at a time
            (tensor.dims if field == TENSOR_DIMS else ints).extend(_signed(v) for v in values)
        elif field == TENSOR_RAW_DATA and wire == LENGTH and b - a <= 64:
            raw = bytes(buf[a:b])
    if tensor.data_type == INT64:
        tensor.values = ints or ([int.from_bytes(raw[i: i + 8], "little", signed=True) for i in range(0, len(raw), 8)]
                                 if raw else None)
    return name, tensor


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, a, b) of each field of the message in buf[start:end]: a varint's value in `a`; a
    length-delimited field's payload as buf[a:b]; fixed-width fields skipped (their position in `a`)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
            yield field, wire, value, pos
        elif wire == LENGTH:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise GraphFormatError("a field runs past the end of its message")
            yield field, wire, pos, pos + size
            pos += size
        elif wire in (FIXED64, FIXED32):
            yield field, wire, pos, pos
            pos += 8 if wire == FIXED64 else 4
        else:
            raise GraphFormatError(f"unexpected protobuf wire type {wire}")
    if pos != end:
        raise GraphFormatError("a message ends inside a field")


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise GraphFormatError("a varint longer than 10 bytes")


def _varints(buf, start: int, end: int) -> list[int]:
    values, pos = [], start
    while pos < end:
        value, pos = _varint(buf, pos)
        values.append(value)
    return values


def _signed(value: int) -> int:
    """A varint read as int64 (negative numbers are ten-byte two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(buf, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8")
