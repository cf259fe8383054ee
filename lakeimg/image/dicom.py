"""DICOM reading through pydicom: native-dtype pixels, the common tags as fields, the header as JSON.

Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) decode through the pylibjpeg
plugins that lakeimg depends on, so they are images, not rejects.

Example:
    >>> from pydicom.data import get_testdata_file
    >>> data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    >>> read_dicom(data).dtype
    'int16'
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from lakeimg.errors import ErrorClass, ImageDecodeError
from lakeimg.image.info import DecodedImage, as_hwc, check_decoded_size

__all__ = ["read_dicom", "decode_dicom_frame", "dicom_fields", "probe_dicom", "read_dicom_frame"]


def _open(data: bytes):
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), force=True)


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _floats(value) -> list[float] | None:
    if value is None or value == "":
        return None
    try:
        return [float(v) for v in value]
    except TypeError:
        return [float(value)]


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _str(value) -> str | None:
    return None if value in (None, "") else str(value)


# column of the `dicom` struct -> (DICOM keyword, coercion of its value)
_FIELDS: dict[str, tuple[str, Any]] = {
    "modality": ("Modality", _str), "patient_id": ("PatientID", _str),
    "study_instance_uid": ("StudyInstanceUID", _str), "series_instance_uid": ("SeriesInstanceUID", _str),
    "sop_instance_uid": ("SOPInstanceUID", _str), "sop_class_uid": ("SOPClassUID", _str),
    "rows": ("Rows", _int), "columns": ("Columns", _int), "number_of_frames": ("NumberOfFrames", _int),
    "pixel_spacing": ("PixelSpacing", _floats), "slice_thickness": ("SliceThickness", _first),
    "image_position_patient": ("ImagePositionPatient", _floats),
    "image_orientation_patient": ("ImageOrientationPatient", _floats),
    "bits_allocated": ("BitsAllocated", _int), "bits_stored": ("BitsStored", _int),
    "pixel_representation": ("PixelRepresentation", _int),
    "photometric_interpretation": ("PhotometricInterpretation", _str),
    "window_center": ("WindowCenter", _first), "window_width": ("WindowWidth", _first),
    "rescale_slope": ("RescaleSlope", _first), "rescale_intercept": ("RescaleIntercept", _first),
}


def dicom_fields(ds) -> dict[str, Any]:
    """The `dicom` struct column for one dataset (see schemas/images.v*.json)."""

    def bulk_handler(_elem) -> str:
        return ""

    header = ds.copy()
    if "PixelData" in header:
        del header["PixelData"]
    try:
        header_json = header.to_json(bulk_data_threshold=4096, bulk_data_element_handler=bulk_handler)
    except Exception:  # noqa: BLE001 - a malformed private tag must not lose the image
        header_json = None
    meta = getattr(ds, "file_meta", None)
    fields = {key: coerce(ds.get(keyword)) for key, (keyword, coerce) in _FIELDS.items()}
    fields["transfer_syntax_uid"] = _str(meta.get("TransferSyntaxUID")) if meta is not None else None
    fields["number_of_frames"] = fields["number_of_frames"] or 1
    return {**fields, "header_json": header_json}


def decode_dicom_frame(data: bytes, frame: int = 0) -> np.ndarray:
    """One frame of a DICOM file as HWC in its stored dtype (no rescale applied)."""
    ds = _open(data)
    arr = ds.pixel_array
    frames = _int(ds.get("NumberOfFrames")) or 1
    if frames > 1:
        arr = arr[frame]
    elif frame:
        raise IndexError(f"frame {frame} out of range: the file has one frame")
    return np.ascontiguousarray(as_hwc(arr))


def read_dicom(data: bytes, uri: str = "", *, max_pixels: int | None = None, max_bytes: int | None = None) -> DecodedImage:
    """Read a DICOM file: header fields, first-frame pixels in the stored dtype.

    `max_bytes` limits every frame's decoded bytes together (pydicom decodes them all), read
    from Rows, Columns, SamplesPerPixel, BitsAllocated and NumberOfFrames before decoding.
    """
    ds = _open(data)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageDecodeError(uri, ErrorClass.NO_PIXEL_DATA,
                              f"DICOM file has no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')}, "
                              f"e.g. a DICOMDIR, structured report or presentation state)")
    rows, cols = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    frames = _int(ds.get("NumberOfFrames")) or 1
    samples = _int(ds.get("SamplesPerPixel")) or 1
    sample_bytes = max(1, (_int(ds.get("BitsAllocated")) or 8) // 8)
    check_decoded_size(uri, cols, rows, samples, f"u{sample_bytes}", frames=frames, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        full = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        text = str(exc).lower()
        error_class = ErrorClass.UNSUPPORTED_FORMAT if "no plugin" in text or "missing" in text else ErrorClass.CORRUPT
        if "truncat" in text or "expected" in text and "length" in text:
            error_class = ErrorClass.TRUNCATED
        raise ImageDecodeError(uri, error_class, f"{type(exc).__name__}: {exc}") from exc
    # pydicom gives (F, H, W[, S]) for multi-frame and (H, W[, S]) for one frame
    pixels = np.ascontiguousarray(as_hwc(full[0] if frames > 1 else full))
    return _dicom_image(dicom_fields(ds), pixels.shape, pixels.dtype, pixels)


def probe_dicom(path) -> DecodedImage:
    """The header of a DICOM file (a path or a seekable binary file; `pixels` None), read without
    its pixel data.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> probe_dicom(get_testdata_file("CT_small.dcm")).width
        128
    """
    import pydicom
    from pydicom.pixels.utils import pixel_dtype

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    try:
        dtype = str(pixel_dtype(ds))
    except Exception:  # noqa: BLE001 - e.g. float pixel data
        dtype = "float32"
    return _dicom_image(dicom_fields(ds), (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1)), dtype)


def read_dicom_frame(path, index: int) -> np.ndarray:
    """One frame of a DICOM file (a path or a seekable binary file) as HWC, decoding only that
    frame (pydicom's `iter_pixels`)."""
    from pydicom.pixels import iter_pixels

    for frame in iter_pixels(path, indices=[index]):
        return np.ascontiguousarray(as_hwc(frame))
    raise IndexError(f"frame {index} out of range")


def _dicom_image(fields: dict[str, Any], shape: tuple[int, ...], dtype, pixels: np.ndarray | None = None) -> DecodedImage:
    height, width, channels = (int(v) for v in shape)
    photometric = fields["photometric_interpretation"] or "MONOCHROME2"
    window = None
    if fields["window_center"] is not None and fields["window_width"]:
        slope = fields["rescale_slope"] or 1.0
        intercept = fields["rescale_intercept"] or 0.0
        center, span = fields["window_center"], fields["window_width"]
        # The window is in rescaled units; convert it back to stored values.
        low = ((center - span / 2) - intercept) / slope
        high = ((center + span / 2) - intercept) / slope
        window = (min(low, high), max(low, high))
    return DecodedImage(
        format="DICOM",
        width=width,
        height=height,
        channels=channels,
        dtype=str(dtype),
        mode=photometric if channels == 1 else ("RGB" if channels == 3 else photometric),
        pages=fields["number_of_frames"],
        pixels=pixels,
        dicom=fields,
        display_window=window,
        invert_display=photometric == "MONOCHROME1",
    )
