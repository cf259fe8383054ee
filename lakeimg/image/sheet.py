"""Contact sheets: thumbnails with short captions as one PNG, or as a self-contained HTML page.

Pure Pillow; the `lakeimg show` command and `Lake.show` feed it the rows of a query. A row
without a `thumbnail` (a derived table) is rendered from its `data` at display size
(`row_thumbnail`). `ContactSheet` shows itself in Jupyter (`_repr_html_`).

Example:
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buf, "JPEG")
    >>> contact_sheet([SheetItem(buf.getvalue(), ["a.jpg", "30x20"])]).size
    (272, 328)
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

from lakeimg.image.codecs import decode_pixels
from lakeimg.image.display import make_thumbnail

__all__ = ["SheetItem", "ContactSheet", "contact_sheet", "html_page", "html_cells", "caption_lines", "row_thumbnail",
           "PIXEL_COLUMNS"]

# What a row needs to be drawn from its pixels when it has no thumbnail (a derived table's row).
PIXEL_COLUMNS = ("data", "encoding", "width", "height", "channels", "dtype")

CELL = 256
PAD = 8
LINE = 16
CAPTION_LINES = 3


@dataclass(frozen=True)
class SheetItem:
    """One cell: thumbnail bytes (any format Pillow reads; None draws a placeholder) and caption lines."""

    thumbnail: bytes | None
    caption: list[str] = field(default_factory=list)


def _uri_tail(uri: str, width: int = 34) -> str:
    tail = "/".join(uri.rstrip("/").split("/")[-2:])
    return tail if len(tail) <= width else "…" + tail[-(width - 1) :]


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def caption_lines(row: dict) -> list[str]:
    """Short caption of a result row: uri tail, size (pixels and bytes), label.

    Example:
        >>> caption_lines({"uri": "file:///d/cats/1.jpg", "width": 4, "height": 3, "label": "cats"})
        ['cats/1.jpg', '4x3', 'label: cats']
    """
    lines = []
    if row.get("uri"):
        lines.append(_uri_tail(str(row["uri"])))
    size = []
    if row.get("width") is not None and row.get("height") is not None:
        size.append(f"{row['width']}x{row['height']}")
    if row.get("size_bytes") is not None:
        size.append(_human_bytes(int(row["size_bytes"])))
    if size:
        lines.append(", ".join(size))
    if row.get("label") is not None:
        lines.append(f"label: {row['label']}")
    return lines[:CAPTION_LINES]


def row_thumbnail(row: dict) -> bytes | None:
    """A row's thumbnail: its `thumbnail` column, else its `data` decoded by `encoding` and
    rendered at display size (derived tables); None when neither is there or decodable.

    Example:
        >>> import numpy as np
        >>> row_thumbnail({"data": bytes(12), "encoding": "raw", "width": 2, "height": 2, "channels": 3, "dtype": "uint8"})[:2]
        b'\xff\xd8'
    """
    if row.get("thumbnail"):
        return row["thumbnail"]
    if all(row.get(c) is not None for c in PIXEL_COLUMNS):
        try:
            pixels = decode_pixels(row["data"], row["encoding"], row["width"], row["height"], row["channels"], row["dtype"])
            return make_thumbnail(pixels, size=CELL)
        except Exception:  # noqa: BLE001 - an undecodable row becomes a placeholder, not a failure
            return None
    return None


@dataclass(frozen=True)
class ContactSheet:
    """Rows of a query as a contact sheet: `save(path)` (.png or .html), `image()`, and an
    inline grid in Jupyter (`_repr_html_`). `more` says the query matched more rows than shown.

    Example:
        >>> sheet = ContactSheet([SheetItem(None, ["a.jpg"])], title="demo")
        >>> "<figure>" in sheet._repr_html_() and "a.jpg" in sheet._repr_html_()
        True
    """

    items: Sequence[SheetItem]
    title: str = "lakeimg"
    more: bool = False

    def __len__(self) -> int:
        return len(self.items)

    def image(self, columns: int = 6) -> Image.Image:
        return contact_sheet(self.items, columns=columns)

    def html(self) -> str:
        return html_page(self.items, title=self.title)

    def save(self, path: str, *, columns: int = 6) -> None:
        """Write a .html page (self-contained) or an image Pillow writes (by suffix); the
        folder is created."""
        if os.path.dirname(os.path.abspath(path)):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if path.lower().endswith((".html", ".htm")):
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(self.html())
        else:
            self.image(columns).save(path)

    def _repr_html_(self) -> str:
        return f"<div class=\"lakeimg-sheet\">{_STYLE}<main>{html_cells(self.items)}</main></div>"

    def _repr_png_(self) -> bytes:  # terminals and notebooks without HTML
        buffer = io.BytesIO()
        self.image().save(buffer, "PNG")
        return buffer.getvalue()


_STYLE = ("<style>.lakeimg-sheet main{display:flex;flex-wrap:wrap;gap:12px}.lakeimg-sheet figure{margin:0;width:256px}"
          ".lakeimg-sheet figure img{display:block;margin:auto;max-width:256px}"
          ".lakeimg-sheet figcaption{font-size:12px;word-break:break-all}"
          ".lakeimg-sheet .none{width:256px;height:256px;border:1px solid #aaa}</style>")


def _open_thumb(data: bytes | None) -> Image.Image | None:
    if not data:
        return None
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception:  # noqa: BLE001 - a broken thumbnail becomes a placeholder, not a failure
        return None
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    if max(im.size) > CELL:
        im.thumbnail((CELL, CELL))
    return im


def contact_sheet(items: Sequence[SheetItem], *, columns: int = 6, background: str = "white") -> Image.Image:
    """A grid of thumbnails (cells of 256 px) with up to three caption lines under each."""
    font = ImageFont.load_default()
    cols = max(1, min(columns, len(items) or 1))
    rows = max(1, -(-len(items) // cols))
    cell_w, cell_h = CELL + 2 * PAD, CELL + 2 * PAD + CAPTION_LINES * LINE + PAD
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), background)
    draw = ImageDraw.Draw(sheet)
    for index, item in enumerate(items):
        x0, y0 = (index % cols) * cell_w + PAD, (index // cols) * cell_h + PAD
        thumb = _open_thumb(item.thumbnail)
        if thumb is None:
            draw.rectangle([x0, y0, x0 + CELL - 1, y0 + CELL - 1], outline="gray")
            draw.text((x0 + 8, y0 + CELL // 2), "no thumbnail", fill="gray", font=font)
        else:
            sheet.paste(thumb.convert("RGB"), (x0 + (CELL - thumb.width) // 2, y0 + (CELL - thumb.height) // 2))
        for line_no, text in enumerate(item.caption[:CAPTION_LINES]):
            draw.text((x0, y0 + CELL + PAD // 2 + line_no * LINE), text, fill="black", font=font)
    return sheet


def html_page(items: Sequence[SheetItem], *, title: str = "lakeimg") -> str:
    """The same grid as one self-contained HTML page (thumbnails inlined as data: URIs)."""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:12px}main{display:flex;flex-wrap:wrap;gap:12px}"
        "figure{margin:0;width:256px}figure img{display:block;margin:auto;max-width:256px}"
        "figcaption{font-size:12px;word-break:break-all}.none{width:256px;height:256px;border:1px solid #aaa}"
        f"</style></head><body><h1>{html.escape(title)}</h1><p>{len(items)} rows</p><main>\n"
        + html_cells(items)
        + "\n</main></body></html>\n"
    )


def html_cells(items: Sequence[SheetItem]) -> str:
    """The grid's cells as HTML `<figure>`s (captions escaped, thumbnails as data: URIs)."""
    cells = []
    for item in items:
        thumb = _open_thumb(item.thumbnail)
        if thumb is None:
            image = '<div class="none">no thumbnail</div>'
        else:
            buf = io.BytesIO()
            thumb.convert("RGB").save(buf, "JPEG", quality=85)
            data = base64.b64encode(buf.getvalue()).decode("ascii")
            alt = html.escape(item.caption[0] if item.caption else "")
            image = f'<img src="data:image/jpeg;base64,{data}" width="{thumb.width}" height="{thumb.height}" alt="{alt}">'
        caption = "<br>".join(html.escape(line) for line in item.caption)
        cells.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
    return "\n".join(cells)
