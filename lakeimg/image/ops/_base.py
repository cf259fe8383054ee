"""The op base classes, the op registry, and the helpers every op module shares.

The registry holds the built-in ops (the classes defined in this package), subclasses defined
elsewhere, the `lakeimg.ops` entry-point group, and "module:Class" import paths.

Example:
    >>> op_class("flip").__name__
    'Flip'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import cv2
import numpy as np

from lakeimg.errors import SpecError
from lakeimg.image._plugins import entry_points_of, import_path
from lakeimg.image.info import as_hwc

__all__ = [
    "ImageTransformer",
    "FeatureOp",
    "make_op",
    "op_class",
    "registered_ops",
    "cast_like",
]

_PACKAGE = __name__.rpartition(".")[0]
_BUILTIN: dict[str, type[ImageTransformer]] = {}
_CUSTOM: dict[str, type[ImageTransformer]] = {}

INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "bilinear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
# dtypes OpenCV's geometric functions take as they are
CV_DTYPES = {np.dtype(t) for t in ("uint8", "uint16", "int16", "float32", "float64")}


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results back to `dtype`: round and clip for integers, plain cast for floats."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return values >= 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0  # bool, and float images taken to be 0..1 where a range is needed


def cv_call(arr: np.ndarray, fn, max_channels: int | None = None) -> np.ndarray:
    """Run an OpenCV geometric function on any dtype: native where OpenCV takes it, else float64;
    by groups of `max_channels` channels for functions that take no more."""
    src = as_hwc(arr)
    if max_channels and src.shape[2] > max_channels:
        groups = range(0, src.shape[2], max_channels)
        return np.concatenate([cv_call(src[:, :, i : i + max_channels], fn) for i in groups], axis=2)
    if src.dtype in CV_DTYPES:
        return as_hwc(fn(src))
    work = src.astype(np.float64)
    return cast_like(as_hwc(fn(work)), src.dtype)


def check_int(params: Mapping[str, Any], key: str, *, minimum: int = 1, optional: bool = False) -> None:
    value = params.get(key)
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SpecError(f"{params.get('op')}: {key} must be an integer >= {minimum}, got {value!r}")


def check_choice(params: Mapping[str, Any], key: str, choices) -> None:
    if params.get(key) not in choices:
        raise SpecError(f"{params.get('op')}: {key} must be one of {sorted(choices)}, got {params.get(key)!r}")


class ImageTransformer:
    """Base class of every op: ndarray in (HWC), ndarray out, with a name, a version and params.

    Subclass it for a custom op: set `name` and `version`, list default params in `defaults`,
    and implement `transform(image)` (or `apply(image, rng)` when the op is random). Defining
    the subclass registers it under `name`; workers in other processes find it through its
    import path, so define it in an importable module (or register an entry point in the
    `lakeimg.ops` group).

    Example:
        >>> import numpy as np
        >>> class Invert(ImageTransformer):
        ...     name, version = "invert_doc", 1
        ...     def transform(self, image):
        ...         return np.iinfo(image.dtype).max - image
        >>> int(Invert().apply(np.zeros((1, 1, 1), np.uint8), None)[0, 0, 0])
        255
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    defaults: ClassVar[dict[str, Any]] = {}
    #: True when the op draws from the rng (makes "variants" meaningful)
    random: ClassVar[bool] = False
    #: "image" ops change the pixels; "feature" ops add columns and pass pixels through
    kind: ClassVar[str] = "image"
    #: True for the ops defined in lakeimg (set on every subclass)
    builtin: ClassVar[bool] = True

    def __init__(self, **params: Any):
        merged = {**self.defaults, **params}
        self.params = merged
        self.validate({"op": self.name, **merged})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.builtin = cls.__module__.startswith(_PACKAGE + ".")
        name = cls.__dict__.get("name")
        if not name:
            return
        if cls.builtin:
            _BUILTIN[name] = cls
        elif name in _BUILTIN:
            raise SpecError(f"custom op name {name!r} is taken by a built-in op")
        else:
            _CUSTOM[name] = cls

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    @classmethod
    def import_path(cls) -> str:
        return f"{cls.__module__}:{cls.__qualname__}"

    def validate(self, params: dict[str, Any]) -> None:
        """Raise SpecError for bad params (called with defaults merged in)."""

    def to_spec(self) -> dict[str, Any]:
        """The op as it appears in a normalized spec: name, version and all params."""
        out: dict[str, Any] = {"op": self.name, "version": self.version, **self.params}
        if not self.builtin and _CUSTOM.get(self.name) is type(self):
            out["impl"] = self.import_path()
        return out

    def transform(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement transform(image)")

    def apply(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Run the op; random ops use `rng`, deterministic ones ignore it."""
        return as_hwc(np.asarray(self.transform(as_hwc(image))))

    def output_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Size the op produces from a (width, height) input, or None when unknown."""
        return None


class FeatureOp(ImageTransformer):
    """An op that adds feature columns and passes pixels through unchanged."""

    kind: ClassVar[str] = "feature"
    defaults: ClassVar[dict[str, Any]] = {"column": None}

    def columns(self) -> list[tuple[str, Any]]:
        """(column name, Spark JSON type) of each column this op adds."""
        raise NotImplementedError

    def features(self, image: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        return image


def op_class(name: str, impl: str | None = None) -> type[ImageTransformer]:
    """The op class for a spec name: built-in, subclass, `lakeimg.ops` entry point, or "module:Class"."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    if name in _CUSTOM:
        return _CUSTOM[name]
    candidates = []
    if impl:
        candidates.append(lambda: import_path(impl))
    eps = entry_points_of("lakeimg.ops")
    if name in eps:
        candidates.append(eps[name].load)
    if ":" in name:
        candidates.append(lambda: import_path(name))
    for load in candidates:
        try:
            cls = load()
        except (ImportError, AttributeError) as exc:
            raise SpecError(f"op {name!r}: cannot load {impl or name}: {exc}") from exc
        if isinstance(cls, type) and issubclass(cls, ImageTransformer):
            return cls
        raise SpecError(f"op {name!r} is not an ImageTransformer subclass")
    raise SpecError(f"unknown op {name!r}; known: {', '.join(registered_ops())}")


def registered_ops() -> list[str]:
    """Names of every op this process knows (built-in, subclasses, entry points)."""
    return sorted({*_BUILTIN, *_CUSTOM, *entry_points_of("lakeimg.ops")})


def make_op(spec: Mapping[str, Any]) -> ImageTransformer:
    """Build an op from its spec entry {"op": name, ...params} ("version" and "impl" are checked).

    Example:
        >>> make_op({"op": "flip", "direction": "vertical"}).params
        {'direction': 'vertical'}
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("op"), str):
        raise SpecError(f"each op must be an object with an 'op' name, got {spec!r}")
    params = dict(spec)
    name = params.pop("op")
    impl = params.pop("impl", None)
    version = params.pop("version", None)
    cls = op_class(name, impl)
    unknown = set(params) - set(cls.defaults) if cls.defaults and cls.builtin else set()
    if unknown:
        raise SpecError(f"{name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(cls.defaults)}")
    try:
        op = cls(**params)
    except TypeError as exc:
        raise SpecError(f"{name}: {exc}") from exc
    if version is not None and version != cls.version:
        raise SpecError(f"{name}: spec asks for version {version}, this lakeimg has version {cls.version}")
    return op
