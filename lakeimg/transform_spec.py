"""Transform specs: parsing (JSON, YAML, dict), validation, normalization, canonical JSON, hash.

A spec is data: an ordered list of ops with params, an output encoding, an optional seed, the
number of variants per image, and an optional SQL `where` over the source table's columns:

    {"ops": [{"op": "resize", "width": 256, "height": 256, "fit": "cover"},
             {"op": "normalize", "method": "imagenet"}],
     "output": {"encoding": "raw"}, "seed": 7}

Normalizing fills every op's and the encoding's defaults and stamps each op's `version`, so the
canonical JSON (sorted keys, compact) of the normalized spec, and its SHA-256 `spec_hash`, change
exactly when the output would change: a new param value, a new op version, a new encoding.
The derived table's columns are `schemas/derived.v1.json` plus each feature op's columns.

Example:
    >>> s = parse_spec({"ops": [{"op": "flip"}], "output": "png"})
    >>> s.to_dict()["ops"]
    [{'op': 'flip', 'version': 1, 'direction': 'horizontal'}]
    >>> s.spec_hash == parse_spec(s.to_dict()).spec_hash
    True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from lakeimg.errors import SpecError
from lakeimg.image.codecs import normalize_output
from lakeimg.image.info import default_max_decoded_bytes
from lakeimg.image.ops import FeatureOp, ImageTransformer, make_op
from lakeimg.schemas import TableContract, table_contract
from lakeimg.sqlguard import parse_where
from lakeimg.tables import canonical_json as _canonical
from lakeimg.tables import spec_hash

__all__ = ["TransformSpec", "parse_spec", "load_spec_text", "SPEC_FORMAT"]

SPEC_FORMAT = 1
_TOP_KEYS = {"ops", "output", "seed", "variants", "where", "format"}


@dataclass(frozen=True)
class TransformSpec:
    """A validated, normalized transform spec (picklable; shipped to workers and executors)."""

    ops: tuple[dict[str, Any], ...]
    output: dict[str, Any]
    seed: int = 0
    variants: int = 1
    where: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The normalized spec: what is hashed and stored in the runs table."""
        return {
            "format": SPEC_FORMAT,
            "ops": [dict(op) for op in self.ops],
            "output": dict(self.output),
            "seed": self.seed,
            "variants": self.variants,
            "where": self.where,
        }

    def canonical_json(self) -> str:
        return _canonical(self.to_dict())

    @cached_property
    def spec_hash(self) -> str:
        return spec_hash(self.to_dict())

    def build_ops(self) -> list[ImageTransformer]:
        """Fresh op objects (import custom ops as needed)."""
        return [make_op(op) for op in self.ops]

    def feature_columns(self) -> list[tuple[str, Any]]:
        """(name, Spark JSON type) of the feature columns, in spec order."""
        out: list[tuple[str, Any]] = []
        for op in self.build_ops():
            if isinstance(op, FeatureOp):
                out.extend(op.columns())
        return out

    def contract(self) -> TableContract:
        """The derived table's contract: base columns + this spec's feature columns."""
        base = table_contract("derived")
        fields = list(base.struct_json["fields"])
        for name, kind in self.feature_columns():
            fields.append({"name": name, "type": kind, "nullable": True, "metadata": {"comment": "feature column of the transform spec"}})
        return TableContract(
            name=base.name,
            version=base.version,
            description=base.description,
            struct_json={"type": "struct", "fields": fields},
            partition_columns=base.partition_columns,
            properties=base.properties,
        )

    def shrink_target(self, width: int, height: int) -> tuple[int, int] | None:
        """The smallest (width, height) the leading size-reducing ops need from a (width, height)
        source, or None when the first op does not shrink (then level 0 is needed).

        Used for tiled sources: a pyramid level at least this large gives the same result
        within resampling error, at a fraction of the decode cost.
        """
        ops = self.build_ops()
        if not ops or ops[0].name != "resize" or not ops[0].params.get("reduce_on_load", True):
            return None
        size = ops[0].output_size(width, height)
        if size is None or size[0] >= width or size[1] >= height:
            return None
        # cover/exact keep the full field of view, so the level must cover the scaled size on both axes
        params = ops[0].params
        if params["fit"] == "cover":
            scale = max(params["width"] / width, params["height"] / height)
            return max(1, round(width * scale)), max(1, round(height * scale))
        return size


def load_spec_text(text: str, *, name: str = "") -> dict[str, Any]:
    """Parse spec text: JSON, or YAML when the name ends in .yaml/.yml or the text is not JSON."""
    if name.endswith((".yaml", ".yml")):
        return _yaml(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            return _yaml(text)
        except SpecError:
            raise SpecError(f"spec is neither JSON nor YAML: {exc}") from exc


def _yaml(text: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a dependency
        raise SpecError("YAML specs need pyyaml") from exc
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"spec is not valid YAML: {exc}") from exc
    if not isinstance(value, dict):
        raise SpecError("spec must be a mapping with an 'ops' list")
    return value


def parse_spec(
    value: TransformSpec | dict[str, Any] | str | os.PathLike[str], *, max_decoded_bytes: int | None = None
) -> TransformSpec:
    """Validate and normalize a spec given as a dict, JSON/YAML text, or a path to a file.

    An op whose output size alone would need more memory than `max_decoded_bytes` (default:
    `lakeimg.image.info.default_max_decoded_bytes()`, sized to this machine) is refused here,
    before any image is read: see `check_spec_memory`.

    Example:
        >>> parse_spec('{"ops": [{"op": "resize", "width": 8, "height": 8}], "seed": 3}').seed
        3
    """
    if isinstance(value, TransformSpec):
        return value
    if isinstance(value, os.PathLike) or (isinstance(value, str) and not value.lstrip().startswith("{") and "\n" not in value):
        path = Path(value)
        if not path.is_file():
            raise SpecError(f"spec file not found: {value}")
        value = load_spec_text(path.read_text(), name=path.name)
    elif isinstance(value, str):
        value = load_spec_text(value)
    if not isinstance(value, dict):
        raise SpecError("spec must be an object with an 'ops' list")
    unknown = set(value) - _TOP_KEYS
    if unknown:
        raise SpecError(f"unknown spec key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    if value.get("format", SPEC_FORMAT) != SPEC_FORMAT:
        raise SpecError(f"spec format {value['format']} is not supported (this lakeimg reads format {SPEC_FORMAT})")
    raw_ops = value.get("ops", [])
    if not isinstance(raw_ops, list):
        raise SpecError("'ops' must be a list")
    ops = [make_op(op) for op in raw_ops]
    check_spec_memory(ops, max_decoded_bytes)
    seed = value.get("seed", 0)
    variants = value.get("variants", 1)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SpecError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(variants, int) or isinstance(variants, bool) or variants < 1:
        raise SpecError(f"variants must be an integer >= 1, got {variants!r}")
    if variants > 1 and not any(op.random for op in ops):
        raise SpecError("variants > 1 needs a random op (augment or crop mode random); the rows would be identical")
    where = value.get("where")
    if where is not None and (not isinstance(where, str) or not where.strip()):
        raise SpecError("where must be a non-empty SQL condition string")
    if where is not None:
        parse_where(where)  # one boolean expression; its columns are checked against the source
    names = [n for op in ops if isinstance(op, FeatureOp) for n, _ in op.columns()]
    base = set(table_contract("derived").column_names)
    clash = sorted({n for n in names if names.count(n) > 1 or n in base})
    if clash:
        raise SpecError(f"feature column name(s) {clash} clash; set the ops' 'column' parameter")
    return TransformSpec(
        ops=tuple(op.to_spec() for op in ops),
        output=normalize_output(value.get("output")),
        seed=seed,
        variants=variants,
        where=where.strip() if where else None,
    )


# Bytes per output pixel a transform holds: a 3-channel 8-bit result plus the working copies the
# op chain keeps.
_BYTES_PER_OUTPUT_PIXEL = 8


def _fixed_output_pixels(op: ImageTransformer) -> int:
    """Pixels an op outputs whatever its input (a lower bound; 0 when it depends on the input)."""
    p = op.params
    if op.name == "resize":
        if p.get("fit") == "shorter":
            return int(p.get("size") or 0) ** 2
        return int(p.get("width") or 0) * int(p.get("height") or 0)
    if op.name == "pad" and p.get("width") and p.get("height"):
        return int(p["width"]) * int(p["height"])
    return 0


def check_spec_memory(ops: list[ImageTransformer], max_decoded_bytes: int | None = None) -> None:
    """Refuse (SpecError) a spec whose ops' fixed output sizes need more than `max_decoded_bytes`.

    Example:
        >>> check_spec_memory([make_op({"op": "resize", "width": 20_000, "height": 20_000})], 2 << 30)
        Traceback (most recent call last):
        ...
        lakeimg.errors.SpecError: op 1 (resize) outputs 20000 x 20000 = 400,000,000 pixels, about 3,200,000,000 bytes per image at 8 bytes a pixel, above the memory limit of 2,147,483,648 bytes per image (max_decoded_bytes)
    """
    limit = default_max_decoded_bytes() if max_decoded_bytes is None else max_decoded_bytes
    for index, op in enumerate(ops, start=1):
        pixels = _fixed_output_pixels(op)
        need = pixels * _BYTES_PER_OUTPUT_PIXEL
        if need > limit:
            p = op.params
            size = f"{p['size']} (shorter side)" if op.name == "resize" and p.get("fit") == "shorter" else f"{p['width']} x {p['height']}"
            raise SpecError(
                f"op {index} ({op.name}) outputs {size} = {pixels:,} pixels, about {need:,} bytes per image at "
                f"{_BYTES_PER_OUTPUT_PIXEL} bytes a pixel, above the memory limit of {limit:,} bytes per image "
                "(max_decoded_bytes)"
            )
