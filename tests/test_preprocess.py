"""Preprocessing: HU -> uint8 (lung window, min-max), resizing, ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from covidlib.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LUNG_WINDOW,
    hu_to_uint8,
    imagenet_normalize,
    preprocess_slice,
    resize_image,
    resize_mask,
    to_uint8,
)
from covidlib.data.types import Case


def test_lung_window_hand_values():
    # u8 = floor((clip(x, -1000, 400) + 1000) * 255 / 1400)
    hu = np.array([-1000, 400, -300, -2000, 3000, -999, 0, -994, -995])
    # -300: 700*255/1400 = 127.5 -> 127; 0: 1000*255/1400 = 182.14 -> 182;
    # -994: 6*255/1400 = 1.09 -> 1; -995: 5*255/1400 = 0.91 -> 0
    expected = [0, 255, 127, 0, 255, 0, 182, 1, 0]
    out = hu_to_uint8(hu)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    assert LUNG_WINDOW == (-1000.0, 400.0)


def test_custom_window_is_lo_hi():
    np.testing.assert_array_equal(hu_to_uint8(np.array([-160, 40, 240]), window=(-160, 240)),
                                  [0, 127, 255])  # 200*255/400 = 127.5 -> 127


def test_minmax_is_per_array_and_floors():
    vol = np.array([[[-1024, -1014]], [[0, 1000]]], dtype=np.float32)  # min -1024, max 1000
    # (x + 1024) * 255 / 2024: -1014 -> 1.26 -> 1, 0 -> 129.01 -> 129, 1000 -> 255
    np.testing.assert_array_equal(hu_to_uint8(vol, method="minmax"), [[[0, 1]], [[129, 255]]])
    # one slice converted with the volume's range gives the same values as the whole volume
    np.testing.assert_array_equal(
        hu_to_uint8(vol[1], method="minmax", value_range=(-1024, 1000)), [[129, 255]]
    )


def test_hu_to_uint8_refuses_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        hu_to_uint8(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="hi > lo"):
        hu_to_uint8(np.full((2, 2), 5.0), method="minmax")
    with pytest.raises(ValueError, match="method"):
        hu_to_uint8(np.zeros(2), method="clahe")


def test_to_uint8_passes_8bit_through_and_converts_hu():
    img = np.array([[[0.0, 17.0, 255.0]]], np.float32)
    out = to_uint8(Case("a", img, intensity="uint8"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[[0, 17, 255]]])
    hu = Case("b", np.array([[[-1000.0, -300.0, 400.0]]], np.float32), intensity="hu")
    np.testing.assert_array_equal(to_uint8(hu), [[[0, 127, 255]]])
    np.testing.assert_array_equal(to_uint8(hu, method="minmax"), [[[0, 127, 255]]])
    with pytest.raises(ValueError, match=r"0\.\.255"):
        to_uint8(Case("c", np.array([[[300.0]]], np.float32), intensity="uint8"))


def test_nearest_mask_resize_2x2_to_4x4():
    m = np.array([[1, 2], [3, 0]], np.uint8)
    out = resize_mask(m, 4)
    np.testing.assert_array_equal(
        out, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 0]]
    )
    assert out.dtype == np.uint8


def test_nearest_mask_downsampling_uses_pixel_centres():
    # output pixel i takes input floor((i + 0.5) * 4 / 2) = 1, 3
    a = np.arange(16, dtype=np.int32).reshape(4, 4)
    np.testing.assert_array_equal(resize_mask(a, 2), [[5, 7], [13, 15]])
    # non-square target, rows 3 -> 6 and columns 5 -> 2: rows 0,0,1,1,2,2, cols 1,3
    b = np.arange(15).reshape(3, 5)
    np.testing.assert_array_equal(resize_mask(b, (6, 2))[:, 0], [1, 1, 6, 6, 11, 11])
    np.testing.assert_array_equal(resize_mask(b, (6, 2))[0], [1, 3])


def test_mask_resize_never_creates_labels():
    rng = np.random.default_rng(0)
    m = rng.choice(np.array([0, 1, 2, 7], np.uint8), size=(37, 53))
    for size in (352, 20, (64, 31)):
        out = resize_mask(m, size)
        assert set(np.unique(out)) <= {0, 1, 2, 7}
    assert set(np.unique(resize_mask(m, 352))) == {0, 1, 2, 7}


def test_resize_image_is_bilinear_float():
    img = np.array([[0.0, 100.0], [100.0, 200.0]], np.float32)
    out = resize_image(img, 4)
    assert out.shape == (4, 4) and out.dtype == np.float32
    # half-pixel bilinear: output (0,1) samples x = 0.25 -> 0 + 0.25*100 = 25; corners stay
    np.testing.assert_allclose(out[0], [0, 25, 75, 100], atol=1e-4)
    np.testing.assert_allclose(out[3], [100, 125, 175, 200], atol=1e-4)
    const = resize_image(np.full((500, 301), 77.0, np.float32), 352)
    assert const.shape == (352, 352)
    np.testing.assert_allclose(const, 77.0, atol=1e-3)


def test_imagenet_normalisation_of_known_pixels():
    out = imagenet_normalize(np.array([[0, 255, 128]], np.uint8))
    assert out.shape == (3, 1, 3) and out.dtype == np.float32
    # 255 -> (1 - 0.485) / 0.229 = 2.2489, 0 -> -0.485 / 0.229 = -2.1179 (red channel)
    expected = [-0.485 / 0.229, 0.515 / 0.229, (128 / 255 - 0.485) / 0.229]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[2, 0, 1], (1 - 0.406) / 0.225, rtol=1e-6)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_preprocess_slice_end_to_end():
    hu = np.full((10, 6), -300.0, np.float32)  # -> 127 everywhere
    mask = np.zeros((10, 6), np.uint8)
    mask[:5, :3] = 2
    img, m = preprocess_slice(hu, mask, "hu", size=8)
    assert img.shape == (3, 8, 8) and m.shape == (8, 8)
    np.testing.assert_allclose(img[1], (127 / 255 - 0.456) / 0.224, rtol=1e-6)
    assert m[:4, :4].min() == 2 and m[4:].max() == 0 and m[:, 4:].max() == 0
    img8, none = preprocess_slice(np.full((3, 3), 255.0), None, "uint8", size=5)
    assert none is None
    np.testing.assert_allclose(img8[0], (1 - 0.485) / 0.229, rtol=1e-6)
