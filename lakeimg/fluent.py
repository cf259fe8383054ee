"""The fluent transform API: `lake.table("images").where(...).resize(...).save("name")`.

A `TableBuilder` is immutable: every call returns a new builder with one more op (or setting),
so partial pipelines can be shared. `.spec()` returns the normalized spec as a dict — the same
spec a JSON file with those ops gives, with the same `spec_hash` — and `.save(target)` runs the
transform job with it.

Example:
    >>> b = TableBuilder(None, "images").where("label = 'cats'").resize(256, 256).normalize("imagenet")
    >>> [op["op"] for op in b.spec()["ops"]], b.spec()["where"]
    (['resize', 'normalize'], "label = 'cats'")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lakeimg.errors import SpecError
from lakeimg.image.ops import ImageTransformer
from lakeimg.transform_spec import TransformSpec, parse_spec

if TYPE_CHECKING:
    from lakeimg.jobs.transform import TransformSummary
    from lakeimg.lake import Lake

__all__ = ["TableBuilder"]


class TableBuilder:
    """Builds a transform spec over one source table of a lake, one op per call."""

    def __init__(
        self,
        lake: Lake | None,
        source: str,
        *,
        ops: tuple[dict[str, Any], ...] = (),
        output: dict[str, Any] | None = None,
        seed: int = 0,
        variants: int = 1,
        where: str | None = None,
    ):
        self._lake = lake
        self.source = source
        self._ops = ops
        self._output = output or {"encoding": "auto"}
        self._seed = seed
        self._variants = variants
        self._where = where

    def __repr__(self) -> str:
        return f"TableBuilder({self.source!r}, ops={[o['op'] for o in self._ops]})"

    def _with(self, **changes: Any) -> TableBuilder:
        state = dict(ops=self._ops, output=self._output, seed=self._seed, variants=self._variants, where=self._where)
        state.update(changes)
        return TableBuilder(self._lake, self.source, **state)

    # --- spec settings ----------------------------------------------------------------------

    def where(self, condition: str) -> TableBuilder:
        """Keep source rows matching a SQL condition over the source's columns (ANDed with earlier ones)."""
        combined = f"({self._where}) AND ({condition})" if self._where else condition
        return self._with(where=combined)

    def seed(self, seed: int) -> TableBuilder:
        return self._with(seed=seed)

    def variants(self, n: int) -> TableBuilder:
        """N rows per image (needs a random op such as augment)."""
        return self._with(variants=n)

    def encode(self, encoding: str = "auto", **params: Any) -> TableBuilder:
        """Output encoding: auto, png, jpeg (quality), webp (quality, lossless), raw (compression)."""
        return self._with(output={"encoding": encoding, **params})

    # --- ops --------------------------------------------------------------------------------

    def op(self, name: str, **params: Any) -> TableBuilder:
        """Append any op by name (built-in, custom subclass, entry point or "module:Class")."""
        return self._with(ops=(*self._ops, {"op": name, **params}))

    def apply(self, op: ImageTransformer | dict[str, Any]) -> TableBuilder:
        """Append an op object (e.g. an `ImageTransformer` subclass instance) or a spec entry."""
        if isinstance(op, ImageTransformer):
            return self._with(ops=(*self._ops, op.to_spec()))
        if isinstance(op, dict):
            return self._with(ops=(*self._ops, dict(op)))
        raise SpecError(f"apply() takes an ImageTransformer or an op dict, not {type(op).__name__}")

    def resize(self, width: int | None = None, height: int | None = None, *, fit: str = "exact", size: int | None = None, interpolation: str = "auto") -> TableBuilder:
        if fit == "shorter" or (size is not None and width is None):
            return self.op("resize", fit="shorter", size=size or width, interpolation=interpolation)
        return self.op("resize", width=width, height=height, fit=fit, interpolation=interpolation)

    def crop(self, width: int, height: int, *, mode: str = "center", x: int = 0, y: int = 0) -> TableBuilder:
        return self.op("crop", width=width, height=height, mode=mode, x=x, y=y)

    def pad(self, **params: Any) -> TableBuilder:
        return self.op("pad", **params)

    def flip(self, direction: str = "horizontal") -> TableBuilder:
        return self.op("flip", direction=direction)

    def rotate(self, angle: float, *, expand: bool = False, **params: Any) -> TableBuilder:
        return self.op("rotate", angle=angle, expand=expand, **params)

    def color(self, to: str, **params: Any) -> TableBuilder:
        return self.op("color", to=to, **params)

    def gray(self) -> TableBuilder:
        return self.color("gray")

    def to_uint8(self, window: str = "percentile", **params: Any) -> TableBuilder:
        return self.op("to_uint8", window=window, **params)

    def normalize(self, method: str = "zero_one", **params: Any) -> TableBuilder:
        return self.op("normalize", method=method, **params)

    def equalize(self, **params: Any) -> TableBuilder:
        return self.op("equalize", **params)

    def clahe(self, clip_limit: float = 2.0, tile_grid: int = 8, **params: Any) -> TableBuilder:
        return self.op("clahe", clip_limit=clip_limit, tile_grid=tile_grid, **params)

    def augment(self, **params: Any) -> TableBuilder:
        return self.op("augment", **params)

    def histogram(self, bins: int = 16, **params: Any) -> TableBuilder:
        return self.op("histogram", bins=bins, **params)

    def mean_std(self, **params: Any) -> TableBuilder:
        return self.op("mean_std", **params)

    def phash(self, **params: Any) -> TableBuilder:
        return self.op("phash", **params)

    # --- results ----------------------------------------------------------------------------

    def transform_spec(self) -> TransformSpec:
        raw: dict[str, Any] = {"ops": list(self._ops), "output": self._output, "seed": self._seed, "variants": self._variants}
        if self._where:
            raw["where"] = self._where
        return parse_spec(raw)

    def spec(self) -> dict[str, Any]:
        """The normalized spec (a dict; `json.dumps` it to get a spec file)."""
        return self.transform_spec().to_dict()

    def save(self, target: str, **options: Any) -> TransformSummary:
        """Run the transform into `LAKE/<target>`; options as `lakeimg.jobs.transform.transform_table`.

        Example:
            >>> lake.table("images").resize(16, 16).save("small", workers=0).added
            4
        """
        if self._lake is None:
            raise SpecError("this builder has no lake; start from Lake(path).table(name)")
        return self._lake.transform(self.source, target, self.transform_spec(), **options)
