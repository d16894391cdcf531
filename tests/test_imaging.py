"""encode_grid: batches of any dtype and range become one readable, captioned PNG grid."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from monitor.imaging import PAD, encode_grid


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image)


def tile(grid: np.ndarray, i: int, columns: int, height: int, width: int) -> np.ndarray:
    row, column = divmod(i, columns)
    top, left = PAD + row * (height + PAD), PAD + column * (width + PAD)
    return grid[top:top + height, left:left + width]


def test_grid_tiles_images_in_rows_of_ceil_sqrt_n_columns_by_default():
    grid = decode(encode_grid(torch.zeros(8, 3, 10, 12, dtype=torch.uint8)))
    assert grid.shape == (PAD + 3 * (10 + PAD), PAD + 3 * (12 + PAD), 3)


def test_grid_takes_the_number_of_columns_asked_for():
    grid = decode(encode_grid(torch.zeros(5, 1, 4, 4), columns=5))
    assert grid.shape == (PAD + 4 + PAD, PAD + 5 * (4 + PAD))


def test_uint8_pixels_are_shown_as_they_are():
    pixels = torch.randint(0, 256, (4, 3, 6, 5), dtype=torch.uint8)
    grid = decode(encode_grid(pixels))
    for i in range(4):
        assert np.array_equal(tile(grid, i, 2, 6, 5), pixels[i].permute(1, 2, 0).numpy())


def test_floats_in_the_unit_range_are_scaled_by_255_as_a_batch():
    pixels = torch.tensor([0.0, 0.5, 1.0, 0.2]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    pixels[1] *= 0.5  # a darker image stays darker: no per-image stretch
    grid = decode(encode_grid(pixels))
    assert tile(grid, 0, 2, 2, 2).tolist() == [[0, 128], [255, 51]]
    assert tile(grid, 1, 2, 2, 2).tolist() == [[0, 64], [128, 26]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.int16])
def test_other_ranges_and_dtypes_are_stretched_per_image(dtype):
    pixels = torch.stack([torch.tensor([[-4, 0], [2, 4]]), torch.tensor([[100, 300], [500, 200]])])[:, None]
    grid = decode(encode_grid(pixels.to(dtype)))
    assert tile(grid, 0, 2, 2, 2).tolist() == [[0, 128], [191, 255]]
    assert tile(grid, 1, 2, 2, 2).tolist() == [[0, 128], [255, 64]]


def test_a_constant_image_is_mid_grey_and_non_finite_pixels_are_black():
    pixels = torch.tensor([[[[7.0, 7.0], [7.0, 7.0]]], [[[float("nan"), 2.0], [float("inf"), 4.0]]]])
    grid = decode(encode_grid(pixels))
    assert tile(grid, 0, 2, 2, 2).tolist() == [[128, 128], [128, 128]]
    assert tile(grid, 1, 2, 2, 2).tolist() == [[0, 0], [0, 255]]


def test_grayscale_batches_make_a_grayscale_png_and_colour_ones_an_rgb_png():
    assert Image.open(io.BytesIO(encode_grid(torch.rand(2, 1, 4, 4)))).mode == "L"
    assert Image.open(io.BytesIO(encode_grid(torch.rand(2, 3, 4, 4)))).mode == "RGB"


def test_captions_are_drawn_in_a_band_under_their_own_tiles():
    pixels = torch.ones(2, 1, 8, 8)
    plain = decode(encode_grid(pixels, columns=2))
    captioned = decode(encode_grid(pixels, ["cat", ""], columns=2))
    assert captioned.shape[0] > plain.shape[0]
    band = captioned[PAD + 8:-PAD]
    middle = captioned.shape[1] // 2
    assert (band[:, :middle] < 128).any(), "the first caption is drawn"
    assert not (band[:, middle:] < 128).any(), "an empty caption draws nothing"


def test_a_long_caption_is_cut_to_its_tile():
    grid = decode(encode_grid(torch.ones(1, 3, 8, 8), ["a caption far longer than any tile is wide"]))
    assert grid.shape[1] <= PAD + 64 + PAD


def test_a_label_and_its_prediction_too_wide_for_a_small_tile_go_on_two_lines_not_cut():
    """CIFAR's 32 x 32: "automobile / horse" was drawn "automobile / ..", the prediction gone."""
    from monitor.imaging import _caption_lines
    from monitor.fonts import font_for

    font = font_for(["automobile / horse"])
    assert _caption_lines("automobile / horse", font, 64) == ["automobile /", "horse"]
    assert _caption_lines("cat / dog", font, 64) == ["cat / dog"]  # fits: one line
    pixels = torch.ones(2, 3, 32, 32)
    one_line = decode(encode_grid(pixels, ["cat / dog", "dog / dog"]))
    two_lines = decode(encode_grid(pixels, ["automobile / horse", "cat / dog"]))
    assert two_lines.shape[1] <= PAD + 2 * (64 + PAD) and two_lines.shape[0] > one_line.shape[0]


def test_non_contiguous_pixels_are_read_as_they_look():
    pixels = torch.rand(4, 3, 8, 8, device="cpu").permute(0, 1, 3, 2)  # not contiguous
    expected = (pixels[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(tile(decode(encode_grid(pixels)), 0, 2, 8, 8), expected)


@pytest.mark.parametrize("pixels, captions, columns, match", [
    (torch.rand(3, 4, 4), None, None, "NCHW tensor or array with 1, 3 or 4 channels, got \\(3, 4, 4\\)"),
    (torch.rand(2, 2, 4, 4), None, None, "1, 3 or 4 channels, got \\(2, 2, 4, 4\\)"),
    (torch.rand(0, 3, 4, 4), None, None, "non-empty"),
    ([[0.5]], None, None, "got list"),
    (torch.rand(2, 3, 4, 4), ["one"], None, "one entry per image \\(2\\), got 1"),
    (torch.rand(2, 3, 4, 4), None, 0, "columns must be an int >= 1, got 0"),
])
def test_bad_pixels_captions_or_columns_raise(pixels, captions, columns, match):
    with pytest.raises(ValueError, match=match):
        encode_grid(pixels, captions, columns)


def test_a_heading_is_drawn_in_a_band_above_the_tiles():
    pixels = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    plain, headed = decode(encode_grid(pixels)), decode(encode_grid(pixels, heading="step 50"))
    band = headed.shape[0] - plain.shape[0]
    assert band > 0 and headed.shape[1] == plain.shape[1]
    assert np.array_equal(headed[band:], plain)  # the grid itself is unchanged, below the band
    assert (headed[:band] < 128).any()  # the heading's ink
    small = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)  # a 16 x 16 sample had "st.." above it
    plain, headed = decode(encode_grid(small)), decode(encode_grid(small, heading="step 30"))
    assert headed.shape[1] > 1.5 * plain.shape[1] and np.array_equal(headed[band:, :plain.shape[1]], plain)
    assert (headed[band:, plain.shape[1]:] == 255).all()  # the grid widened to the right, with background
    inked = np.flatnonzero((headed[:band] < 128).any(axis=0))
    assert inked[-1] - inked[0] > 25  # "step 30" whole


def test_a_fourth_channel_is_the_opacity_over_white_whatever_its_range():
    colours = torch.tensor([0.0, 100.0, 200.0]).reshape(1, 3, 1, 1)  # a 0-255 image: stretched
    opaque = tile(decode(encode_grid(colours)), 0, 1, 1, 1)[0, 0].astype(float)  # [0, 128, 255]
    for alpha, opacity in [(255.0, 1.0),           # a 0-255 image's alpha
                           (1.0, 1.0),             # a [0, 1] alpha beside 0-255 colours
                           (float("nan"), 1.0),    # not finite: opaque
                           (0.5, 0.5), (-3.0, 0.0)]:
        pixels = torch.cat([colours, torch.full((1, 1, 1, 1), alpha)], 1)
        shown = tile(decode(encode_grid(pixels)), 0, 1, 1, 1)[0, 0]
        assert np.abs(shown - (opaque * opacity + 255 * (1 - opacity))).max() <= 1, (alpha, shown)
    uint8 = torch.tensor([0, 100, 200, 51], dtype=torch.uint8).reshape(1, 4, 1, 1)  # as is: 20% opaque
    shown = tile(decode(encode_grid(uint8)), 0, 1, 1, 1)[0, 0]
    assert np.abs(shown - (np.array([0, 100, 200]) * 0.2 + 255 * 0.8)).max() <= 1


@pytest.fixture
def no_fonts_found(monkeypatch):
    """The fonts module as a fresh process finds it: no system font loaded yet."""
    from monitor import fonts

    monkeypatch.setattr(fonts, "_found", [])
    monkeypatch.setattr(fonts, "_said", False)
    return fonts


def test_captions_beyond_ascii_are_drawn_in_a_system_font_that_has_their_characters(no_fonts_found, monkeypatch):
    """Pillow's own font drew 'Straße' and '猫' as boxes."""
    fonts = no_fonts_found
    assert not fonts.has(fonts.pillows(), "ß") and fonts.has(fonts.pillows(), "s")
    path = fonts._fontconfig(frozenset("ßк"))
    if path is None:
        pytest.skip("no fontconfig (fc-match) on this machine")
    monkeypatch.setenv("MONITOR_FONT", path)  # a font file given, as fontconfig would pick it
    font = fonts.font_for(["Straße", "кошка", "step 5"])
    assert font is not fonts.pillows() and all(fonts.has(font, c) for c in "Straßeкошка")
    assert fonts.font_for(["cat", "step 5"]) is fonts.pillows()  # ASCII: Pillow's, as before
    drawn, missing = (decode(encode_grid(torch.zeros(1, 3, 8, 8), captions=[c])) for c in ("ß", "\uffff"))
    assert not np.array_equal(drawn, missing)  # a letter, not the box of a glyph no font has


def test_characters_no_font_has_are_said_once_and_drawn_as_pillow_s_boxes(no_fonts_found, monkeypatch, caplog):
    fonts = no_fonts_found
    monkeypatch.delenv("MONITOR_FONT", raising=False)
    monkeypatch.setattr(fonts, "_fontconfig", lambda wanted: None)
    monkeypatch.setattr(fonts, "_KNOWN", ())
    with caplog.at_level("WARNING", logger="monitor"):
        for _ in range(2):
            assert fonts.font_for(["猫 / 狗"]) is fonts.pillows()
            encode_grid(torch.zeros(2, 3, 8, 8), captions=["猫", "狗"])
    assert len(caplog.records) == 1 and "no font of this system has 狗猫" in caplog.text
    assert "MONITOR_FONT" in caplog.text


def test_floats_in_minus_one_to_one_are_shown_from_black_to_white_not_stretched():
    # A diffusion model's samples (images normalised to [-1, 1]): a dim red square on black
    # showed as full red, an all-black sample as mid grey.
    dim_red = torch.full((3, 2, 2), -1.0)
    dim_red[0, 0, 0] = -0.6
    black = torch.full((3, 2, 2), -1.0)
    grid = decode(encode_grid(torch.stack([dim_red, black, torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])))
    assert tile(grid, 0, 2, 2, 2)[0, 0].tolist() == [51, 0, 0] and tile(grid, 0, 2, 2, 2)[1, 1].tolist() == [0, 0, 0]
    assert tile(grid, 1, 2, 2, 2).max() == 0
    assert tile(grid, 2, 2, 2, 2).tolist() == [[[128] * 3] * 2] * 2 and tile(grid, 3, 2, 2, 2).min() == 255


def test_a_grid_given_its_columns_lays_out_that_many_images_a_row():
    from helpers.monitors import monitor_with

    square, row = (Image.open(io.BytesIO(encode_grid(torch.rand(8, 1, 10, 10), columns=c))).size for c in (None, 8))
    assert row[0] > 2 * square[0] and row[1] < square[1]  # 8 in a row (make_grid's nrow): wide, one row high
    monitor, _ = monitor_with()
    with pytest.raises(ValueError, match="columns must be an int >= 1, got 0"):
        monitor.log.images("samples", 1, torch.rand(8, 1, 4, 4), columns=0)
