"""The artifact manifest as one typed contract: written by export and quantize, read by everything else.

`artifact.py` owns the folder mechanics (atomic staging, sha256 of every file); this module owns what the
manifest says, and checks that it says what is in the folder: the graph it names is a checksummed file
inside the folder, the opset it states is the graph's, and the interface it states is the graph's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from . import artifact
from qtool_runtime.contract import (FEEDING_KEYS, QTOOL_KIND, Engine, MAX_TOKENS, MenuEntry, Mode, Precision,
                                    bounded_int, check_fields, feeding)
from qtool_runtime.engines import runs_exactly

from ..model.families import OPTIONAL_ROLES
from ..model.families import ROLES as FAMILY_ROLES
from ..core.length import LengthConfig, LengthConfigError
from .interface import GraphError, GraphInterface, is_invariant

class Kind(Mode):
    QTOOL = QTOOL_KIND  # our Drop-and-Restore graphs
    STANDARD = "standard"  # the standard recipe's plain-model graphs (what a team gets without qtool)


KINDS = Kind.choices()
# Roles of weight MatMuls that quantization recipes select from (recorded by export, never guessed later).
ROLES = FAMILY_ROLES + OPTIONAL_ROLES


class ManifestError(artifact.ArtifactError):
    """A manifest of the wrong shape, or one that does not describe the folder it is in."""


@dataclass
class Manifest:
    graph: str
    precision: str
    length_config: LengthConfig
    interface: GraphInterface
    opset: int
    max_positions: int  # longest input (tokens) the graph accepts: the model's position table
    doc_stride: int
    max_answer_length: int
    source_model: str
    model_type: str
    flops_ratio: float
    roles: dict[str, list[str]] = field(default_factory=dict)
    kind: str = Kind.QTOOL
    validation: dict | None = None
    quantization: dict | None = None
    source_fp32: dict | None = None  # {"folder": name, "sha256": of its graph}: the FP32 twin of an INT8 graph
    menu: list[MenuEntry] | None = None  # a run-time configuration graph's configurations (contract.check_menu)
    menu_scored: dict | None = None  # how the menu's F1 and ms were measured (`qtool menu`)
    route: dict | None = None  # a routed graph (toolchain.graph.route): its full and reduced parts and the crossover timed
    engine: str = Engine.ONNXRUNTIME  # the runtime the graph is meant to run on (contract.Engine)
    float_precision: str | None = None  # contract.FloatPrecision; None: by kind (contract.float_precision_of)
    graph_passes: dict[str, int] | None = None  # rewrites each graph pass made (export's, or the INT8 passes')
    files: dict[str, str] = field(default_factory=dict)
    created: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def is_reduced(self) -> bool:
        return self.interface.is_reduced

    @property
    def is_runtime(self) -> bool:
        """A run-time configuration graph: one graph, keep counts chosen per run from its menu."""
        return self.interface.takes_keep

    def menu_configs(self) -> list[LengthConfig]:
        """The menu as length configurations (the single configuration of any other graph)."""
        if not self.menu:
            return [self.length_config]
        lc = self.length_config
        return [LengthConfig(tuple(e.keep), lc.seq_len, lc.rule, lc.variant) for e in self.menu]

    @property
    def runs_exactly(self) -> bool:
        """Whether runtimes must compute what the graph states in FP32 as FP32 (engines.runs_exactly)."""
        return runs_exactly(self.kind, self.float_precision)

    @property
    def invariant(self) -> bool:
        """Answers depend neither on padding nor on batch-mates (no per-batch activation scales, no
        padding-dependent drop counts): every input protocol gives the same logits. A routed graph's hold when its
        batches never straddle its threshold (contract.length_runs, which every batcher here follows)."""
        return is_invariant(self.length_config, static=self.feeding["batchable"])

    @property
    def feeding(self) -> dict[str, bool]:
        """How the kit may feed the graph (`qtool_runtime.kit.feeding`, the one rule both sides read):
        `batchable` (no activation scale computed per batch) and `pad_to_seq_len` (drop counts or significance
        see padding, so every window is padded to seq_len as validated)."""
        rule = feeding({"length_config": self.length_config.to_dict(), "quantization": self.quantization})
        return dict(zip(FEEDING_KEYS, rule))

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["feeding"] = self.feeding
        data["length_config"] = self.length_config.to_dict()
        data["interface"] = self.interface.to_dict()
        for key in ("menu_scored", "route", "graph_passes", "float_precision"):
            if data[key] is None:
                data.pop(key)
        if self.menu is None:
            data.pop("menu")
        else:
            data["menu"] = [e.to_dict() if isinstance(e, MenuEntry) else e for e in self.menu]
        for key in ("files", "created", "versions"):  # artifact.write_manifest fills these
            if not data[key]:
                data.pop(key)
        return data

    @classmethod
    def from_json(cls, data: object, where: str = "manifest") -> "Manifest":
        """Parse and validate; any shape error names the field."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: a manifest must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("graph", "precision", "length_config", "interface", "opset", "max_positions", "doc_stride",
                     "max_answer_length", "flops_ratio"):
            if name not in values:
                raise ManifestError(f"{where}: field {name!r} is missing")
        try:
            values["length_config"] = LengthConfig.from_dict(values["length_config"])
            values["interface"] = GraphInterface.from_dict(values["interface"])
        except (KeyError, TypeError, ValueError, LengthConfigError, GraphError) as exc:
            raise ManifestError(f"{where}: {exc}") from exc
        values.setdefault("source_model", "")
        values.setdefault("model_type", "")
        manifest = cls(**values)
        manifest.check_shape(where)  # the menu's raw shape first (contract.check_menu), then its type
        if isinstance(manifest.menu, list):
            manifest.menu = [MenuEntry.from_dict(e) for e in manifest.menu]
        return manifest

    def check_shape(self, where: str = "manifest") -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ManifestError(f"{where}: {message}")

        check_fields(self.to_json(), lambda message: need(False, message))
        need(self.kind in KINDS, f"kind {self.kind!r} is not one of {KINDS}")
        need(bounded_int(self.opset), f"opset must be an integer in 1..{MAX_TOKENS}, got {self.opset!r}")
        need(isinstance(self.flops_ratio, (int, float)) and 0 <= self.flops_ratio <= 1e3, "flops_ratio must be a number")
        need(isinstance(self.roles, dict) and all(r in ROLES and isinstance(n, list) for r, n in self.roles.items()),
             f"roles must map {ROLES} to node-name lists")
        need(self.interface.is_reduced == (not self.length_config.is_full or self.interface.takes_keep),
             "interface and length configuration disagree on whether the graph drops tokens")
        need(isinstance(self.files, dict), "files must map names to sha256")


def write(folder: str | Path, manifest: Manifest) -> Manifest:
    """Hash the folder's files into `manifest` and write it (atomically)."""
    manifest.check_shape(str(folder))
    data = artifact.write_manifest(Path(folder), manifest.to_json())
    return Manifest.from_json(data, str(folder))


def load(folder: str | Path, *, check_graph: bool = True) -> Manifest:
    """Read an artifact's manifest, re-hash its files, and check the manifest describes the folder."""
    folder = Path(folder)
    data = artifact.check_artifact(folder)
    manifest = Manifest.from_json(data, str(folder / artifact.MANIFEST))
    if manifest.graph not in manifest.files:
        raise ManifestError(f"{folder}: the graph {manifest.graph!r} is not among the checksummed files")
    if check_graph:
        import onnx

        try:
            graph = onnx.load(str(folder / manifest.graph), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and others for a truncated or foreign file
            raise ManifestError(f"{folder}: {manifest.graph} is not a loadable ONNX graph "
                                f"({type(exc).__name__}: {str(exc)[:200]})") from None
        opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset != manifest.opset:
            raise ManifestError(f"{folder}: manifest says opset {manifest.opset}, the graph has opset {opset}")
        rows = position_rows(graph)
        if rows is not None and manifest.max_positions > rows:
            raise ManifestError(f"{folder}: manifest says max_positions {manifest.max_positions}, the graph's position "
                                f"table has {rows} rows (manifest altered?)")
        from qtool_runtime.kit import check_graph as check_graph_facts

        check_graph_facts(folder, data)  # what the kit reads from the graph: opset, routed threshold, positions
        names = ([i.name for i in graph.graph.input], [o.name for o in graph.graph.output])
        if tuple(names[0]) != manifest.interface.inputs or tuple(names[1]) != manifest.interface.outputs:
            raise ManifestError(
                f"{folder}: manifest interface {manifest.interface.to_dict()} is not the graph's "
                f"(inputs {names[0]}, outputs {names[1]})"
            )
    return manifest


def check_runs(folder: str | Path, session) -> None:
    """The kit's own check of an artifact against its graph (one validator for both sides): graph facts, the
    tokenizer's ids, and the kept-token widths of one full window run on `session`."""
    from qtool_runtime.kit import check_runs_as_described

    folder = Path(folder)
    check_runs_as_described(folder, artifact.read_manifest(folder), session)


def position_rows(graph) -> int | None:
    """Rows of the graph's position-embedding table (None if it has none by that name)."""
    for init in graph.graph.initializer:
        if "position_embeddings" in init.name and len(init.dims) == 2:
            return int(init.dims[0])
    return None


def find(root: str | Path) -> list[tuple[Path, Manifest]]:
    """Every artifact under `root` (itself or one level below), checked."""
    return [(folder, load(folder)) for folder in artifact.find_artifacts(root)]


def twin_of(folder: Path, manifest: Manifest, others: dict[Path, Manifest]) -> Path | None:
    """The FP32 artifact an INT8 artifact was quantized from, found by the checksum it records."""
    if not manifest.source_fp32:
        return None
    digest = manifest.source_fp32.get("sha256")
    return next((f for f, m in others.items() if m.precision == Precision.FP32 and m.files.get(m.graph) == digest), None)
