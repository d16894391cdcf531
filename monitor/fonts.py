"""The font that captions and box labels are drawn in, in the sink's process.

Pillow's own font has ASCII alone: ``café``, ``Straße`` and ``猫`` come out as boxes. Text with
other characters is drawn in a font of the system that has them all: ``$MONITOR_FONT`` (a
.ttf, .otf or .ttc file), else the one fontconfig picks for them (``fc-match``), else a
Chinese, Japanese and Korean font where macOS and Windows keep one. Where none has them all,
the font that has most draws it, and the characters none has are said once.

    font = font_for(["cat / 猫", "step 50"])       # a font that has every character
"""
from __future__ import annotations

import functools
import logging
import os
import subprocess
from typing import Iterable

from PIL import ImageFont

_log = logging.getLogger("monitor")

SIZE = 12  # pixels: a system font's glyphs as tall as Pillow's own at its size 10
_WINDOWS_FONTS = os.path.join(os.environ.get("WINDIR", "C:/Windows"), "Fonts")
_KNOWN = ("/System/Library/Fonts/Supplemental/Arial Unicode.ttf", "/Library/Fonts/Arial Unicode.ttf",
          "/System/Library/Fonts/STHeiti Light.ttc", "/System/Library/Fonts/AppleSDGothicNeo.ttc",
          *(os.path.join(_WINDOWS_FONTS, name) for name in ("msyh.ttc", "msgothic.ttc", "malgun.ttf", "arialuni.ttf")))
_found: list[ImageFont.FreeTypeFont] = []  # system fonts loaded for earlier text, tried first
_said = False


def font_for(texts: Iterable[str]) -> ImageFont.ImageFont:
    """A font that has every character of ``texts``: Pillow's own where they are ASCII."""
    global _said
    wanted = frozenset(c for text in texts for c in text if not c.isascii() and c.isprintable())
    if not wanted:
        return pillows()
    best, most = pillows(), set()
    for font in _candidates(wanted):
        drawn = {c for c in wanted if has(font, c)}
        if len(drawn) == len(wanted):
            return font
        if len(drawn) > len(most):
            best, most = font, drawn
    if not _said:
        _said = True
        _log.warning("monitor: no font of this system has %s, in captions or labels: drawn as boxes; set "
                     "MONITOR_FONT to a font file that has them, or install one (Debian: fonts-noto-cjk)",
                     "".join(sorted(wanted - most)[:8]))
    return best


@functools.lru_cache(maxsize=1)
def pillows() -> ImageFont.ImageFont:
    """Pillow's own font (ASCII)."""
    return ImageFont.load_default()


def has(font: ImageFont.ImageFont, character: str) -> bool:
    """Whether ``font`` draws ``character`` as itself, not as its box for a missing glyph."""
    return _shape(font, character) != _shape(font, "\uffff")  # U+FFFF: in no font


@functools.lru_cache(maxsize=4096)
def _shape(font: ImageFont.ImageFont, character: str) -> tuple:
    mask = font.getmask(character)
    return mask.size, bytes(mask)


def _candidates(wanted: frozenset[str]) -> Iterable[ImageFont.ImageFont]:
    yield from _found
    paths = [os.environ.get("MONITOR_FONT"), _fontconfig(wanted), *_KNOWN]
    for path in dict.fromkeys(p for p in paths if p):
        font = _load(path)
        if font is not None and font not in _found:
            _found.append(font)
            yield font


@functools.lru_cache(maxsize=None)
def _load(path: str) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(path, SIZE)
    except OSError as error:  # not there, or not a font
        if path == os.environ.get("MONITOR_FONT"):
            _log.warning("monitor: MONITOR_FONT must be a font file (.ttf, .otf, .ttc), got %r: %s", path, error)
        return None


@functools.lru_cache(maxsize=256)
def _fontconfig(wanted: frozenset[str]) -> str | None:
    """The file of the font fontconfig picks for ``wanted`` (it may lack some); None without fontconfig."""
    charset = " ".join(f"{ord(c):x}" for c in sorted(wanted)[:64])
    try:
        answer = subprocess.run(["fc-match", "-f", "%{file}", f":charset={charset}"], capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip() or None
