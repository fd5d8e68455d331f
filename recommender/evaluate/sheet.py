"""Contact sheets: rows of pictures with captions, as the retrieval blog shows its failures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..errors import ImageError, RecommenderError
from ..images import fit_square, load_image

_SHEET_CELL = 128


@dataclass(frozen=True)
class SheetRow:
    """One row of a contact sheet: its section title, and (picture, caption) cells left to right."""

    section: str
    cells: tuple[tuple[Path | None, str], ...]


def contact_sheet(rows: Sequence[SheetRow], path: str | Path, *, cell: int = _SHEET_CELL) -> Path:
    """Draw rows of pictures with captions under section titles, as the retrieval blog shows its failures.

    Saved as a palette PNG: small enough to commit, and the pictures are flat colours anyway.
    """
    path = Path(path)
    if not rows:
        raise RecommenderError("no results to draw on a contact sheet")
    font = ImageFont.load_default(size=11)
    title_font = ImageFont.load_default(size=13)
    columns = max(len(r.cells) for r in rows)
    caption, title_h, pad = 16, 22, 6
    sections = list(dict.fromkeys(r.section for r in rows))
    width = pad + columns * (cell + pad)
    height = pad + len(sections) * title_h + len(rows) * (cell + caption + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for section in sections:
        draw.text((pad, y + 3), section, fill=(0, 0, 0), font=title_font)
        y += title_h
        for row in (r for r in rows if r.section == section):
            for c, (picture, text) in enumerate(row.cells):
                x = pad + c * (cell + pad)
                box = (x, y, x + cell - 1, y + cell - 1)
                try:
                    if picture is None:
                        raise ImageError("no picture")
                    sheet.paste(fit_square(load_image(picture), cell), (x, y))
                except (ImageError, OSError):
                    draw.rectangle(box, fill=(235, 235, 235))
                draw.rectangle(box, outline=(200, 200, 200))
                draw.text((x, y + cell + 2), _fit_text(draw, text, font, cell), fill=(40, 40, 40), font=font)
            y += cell + caption + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def _fit_text(draw: Any, text: str, font: Any, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text
