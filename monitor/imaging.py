"""Turns a batch of images into one captioned PNG grid, in the sink's process. Also draws boxes
and their labels on an image (``SummaryWriter.add_image_with_boxes``).

    png = encode_grid(torch.rand(8, 3, 32, 32), captions=["cat", "dog", ...])
    Path("grid.png").write_bytes(png)

A tensor becomes display values (``display_values``) where it can be read; the grid and its PNG
need only numpy and PIL, so a sink in a process of its own draws them without torch.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from monitor import checks
from monitor.fonts import font_for

PAD = 2                 # pixels between tiles and around the grid
BACKGROUND = 255        # white padding and caption bands, black caption text
CAPTION_ROOM = 64       # a tile narrower than this is widened up to it (or to 2x) for its caption


def encode_grid(pixels: "torch.Tensor | np.ndarray", captions: Sequence[str] | None = None,
                columns: int | None = None, heading: str | None = None, fps: float | None = None) -> bytes:
    """PNG bytes of ``pixels`` (NCHW, 1, 3 or 4 channels: a tensor of any dtype and device, or a
    numpy array) tiled in a grid.

    Display values: uint8 as is; floats (or bools) whose finite values all lie in [0, 1] times
    255; else in [-1, 1] (a generator's tanh, images normalised with mean and std 0.5) from -1
    black to 1 white, so a dark sample looks dark; anything else stretched to 0-255 per image
    from its finite min and max (a constant image is mid grey). Non-finite pixels are black. A
    fourth channel is alpha, the opacity of the image laid over white (as a page shows a
    transparent PNG): uint8 as is, values up to 1 times 255, larger ones as 0-255 (clipped),
    non-finite ones opaque.

    ``columns`` defaults to ceil(sqrt(N)); each caption is drawn under its tile, which is
    widened for it up to twice its width (or 64 pixels); a caption longer than that has its
    parts ("cat / dog") on lines of their own, and a line still longer is cut and ends in "..".
    ``heading`` (e.g. "step 50") is drawn in a band above the grid, widened for it where the
    images are smaller.

    With ``fps``, ``pixels`` are N videos (NTCHW, each stretched as one image) and the PNG is
    animated: at each of the T frames, a grid of the videos' frame, played at ``fps`` in a loop
    (an APNG, which browsers play wherever they show a PNG).
    """
    dims, channels, said = (4, (1, 3, 4), "NCHW tensor or array with 1, 3 or 4") if fps is None else \
        (5, (1, 3), "NTCHW tensor or array with 1 or 3")
    if not (checks._is_tensor(pixels) or isinstance(pixels, np.ndarray)) or pixels.ndim != dims \
            or pixels.shape[-3] not in channels or 0 in pixels.shape:
        got = tuple(pixels.shape) if hasattr(pixels, "shape") else type(pixels).__name__
        raise ValueError(f"pixels must be a non-empty {said} channels, got {got}")
    count = pixels.shape[0]
    if captions is not None and len(captions) != count:
        raise ValueError(f"captions must have one entry per image ({count}), got {len(captions)}")
    if columns is None:
        columns = math.ceil(math.sqrt(count))
    else:
        checks.positive_int("columns", columns)
    values = display_values(pixels)
    frames = [values] if fps is None else values.swapaxes(0, 1)
    images = [_grid(frame, captions, min(columns, count), heading) for frame in frames]
    buffer = io.BytesIO()
    if len(images) == 1:
        images[0].save(buffer, format="PNG", compress_level=1)
    else:
        images[0].save(buffer, format="PNG", compress_level=1, save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / fps)), loop=0)
    return buffer.getvalue()


def _grid(values: np.ndarray, captions: Sequence[str] | None, columns: int, heading: str | None) -> Image.Image:
    """Display values (uint8 NCHW) tiled ``columns`` wide, with their captions and heading."""
    count, channels, height, width = values.shape
    rows = math.ceil(count / columns)
    tiles = values.transpose(0, 2, 3, 1)  # NHWC
    font = font_for([*map(str, captions or ()), heading or ""])
    cell_width, band, lines = width, 0, []
    line_height = font.getbbox("Ag")[3]
    if captions:
        widest = max(font.getlength(str(c)) for c in captions)
        cell_width = max(width, min(math.ceil(widest) + 2 * PAD, max(2 * width, CAPTION_ROOM)))
        lines = [_caption_lines(str(c), font, cell_width) for c in captions]
        band = max(map(len, lines)) * line_height + 2 * PAD
    cell_height = height + band
    top_band = font.getbbox("Ag")[3] + PAD if heading else 0
    wide = math.ceil(font.getlength(heading)) + 2 * PAD if heading else 0  # a small image's heading whole
    canvas = np.full((top_band + PAD + rows * (cell_height + PAD), max(PAD + columns * (cell_width + PAD), wide),
                      channels), BACKGROUND, dtype=np.uint8)
    for i in range(count):
        top, left = _corner(i, columns, cell_width, cell_height, top_band)
        left += (cell_width - width) // 2
        canvas[top:top + height, left:left + width] = tiles[i]

    image = Image.fromarray(canvas[..., 0] if channels == 1 else canvas, "L" if channels == 1 else "RGB")
    draw = ImageDraw.Draw(image)
    ink = 0 if channels == 1 else (0, 0, 0)
    if heading:
        draw.text((PAD, PAD), _fit(heading, font, canvas.shape[1] - 2 * PAD), fill=ink, font=font)
    for i, texts in enumerate(lines):
        top, left = _corner(i, columns, cell_width, cell_height, top_band)
        for line, text in enumerate(texts):
            draw.text((left + (cell_width - math.ceil(font.getlength(text))) // 2,
                       top + height + PAD + line * line_height), text, fill=ink, font=font)
    return image


def _caption_lines(caption: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """A caption as drawn under its tile: one line, or where it is too wide, its parts (``cat /``,
    ``dog``: a label and its prediction) on lines of their own, each cut to fit."""
    if font.getlength(caption) <= width or " / " not in caption:
        return [_fit(caption, font, width)]
    *labels, last = caption.split(" / ")
    return [_fit(part, font, width) for part in [*(label + " /" for label in labels), last]]


def with_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: list[str] | None, rescale: float) -> torch.Tensor:
    """``image`` (uint8 CHW) scaled by ``rescale``, with red boxes and their labels on it, as 1 x 3 x H x W."""
    import torch

    picture = Image.fromarray(image.detach().cpu().expand(3, -1, -1).permute(1, 2, 0).numpy())
    if rescale != 1:
        picture = picture.resize((max(1, round(picture.width * rescale)), max(1, round(picture.height * rescale))))
    draw, font = ImageDraw.Draw(picture), font_for(labels or ())
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        draw.rectangle((x1, y1, x2, y2), outline=(255, 0, 0), width=2)
        if labels is not None and labels[i]:
            left, top, right, bottom = draw.textbbox((x1, y1), labels[i], font=font)
            above = max(0, y1 - (bottom - top) - 2)  # above the box, inside the image
            draw.rectangle((x1, above, x1 + right - left + 2, above + bottom - top + 2), fill=(255, 0, 0))
            draw.text((x1 + 1, above + 1 - (top - y1)), labels[i], fill=(255, 255, 255), font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).unsqueeze(0)


def display_values(pixels: "torch.Tensor | np.ndarray", value_range: tuple[float, float] | None = None
                   ) -> np.ndarray:
    """``pixels`` (N, ...) as uint8 display values on the CPU, by the rules of :func:`encode_grid`
    (NCHW with 4 channels: 3, the colours laid over white by their alpha), or from ``value_range``'s
    low (black) to its high (white), values beyond them clipped."""
    if isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and not _with_alpha(pixels):
        return pixels  # display values already: what a record brings to the sink's process
    import torch

    from monitor.host import on_host

    pixels = on_host(torch.as_tensor(pixels).detach())
    if _with_alpha(pixels):
        alpha = pixels[:, 3:]
        if alpha.dtype != torch.uint8:
            alpha, finite = alpha.to(torch.float64), alpha.isfinite()
            if bool((alpha[finite] <= 1).all()):
                alpha = alpha * 255
            alpha = torch.where(finite, alpha, 255.0).clamp(0, 255)
        opacity = alpha.numpy() / 255.0
        colours = display_values(pixels[:, :3], value_range)
        return np.rint(colours * opacity + BACKGROUND * (1 - opacity)).astype(np.uint8)
    if pixels.dtype == torch.uint8:
        return pixels.numpy()
    wide = pixels.dtype in (torch.float64, torch.int64, torch.int32)
    unit_range = pixels.is_floating_point() or pixels.dtype == torch.bool
    values = pixels.to(torch.float64 if wide else torch.float32).numpy()
    finite = np.isfinite(values)
    low = np.where(finite, values, np.inf).reshape(len(values), -1).min(axis=1)
    high = np.where(finite, values, -np.inf).reshape(len(values), -1).max(axis=1)
    if value_range is not None:
        scaled = (values - value_range[0]) / (value_range[1] - value_range[0]) * 255.0
    elif unit_range and (low >= 0).all() and (high <= 1).all():
        scaled = values * 255.0
    elif unit_range and (low >= -1).all() and (high <= 1).all():  # tanh's range, Normalize(0.5, 0.5)'s
        scaled = (values + 1.0) * 127.5
    else:
        shape = (-1,) + (1,) * (values.ndim - 1)
        span = (high - low).reshape(shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.where(span > 0, (values - low.reshape(shape)) / span * 255.0, 128.0)
    scaled = np.where(finite, scaled, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _with_alpha(pixels: "torch.Tensor | np.ndarray") -> bool:
    return pixels.ndim == 4 and pixels.shape[1] == 4


def _corner(i: int, columns: int, cell_width: int, cell_height: int, top: int) -> tuple[int, int]:
    row, column = divmod(i, columns)
    return top + PAD + row * (cell_height + PAD), PAD + column * (cell_width + PAD)


def _fit(text: str, font: ImageFont.ImageFont, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "..") > width:
        text = text[:-1]
    return text + ".."

