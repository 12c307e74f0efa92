"""Readers: NIfTI orientation/spacing/scaling, 8-bit slices, manifest-driven loading, bad input."""

from __future__ import annotations

import gzip
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covidlib.data.errors import DataError
from covidlib.data.readers import (
    iter_cases,
    load_cases,
    read_nifti,
    read_nifti_labels,
    read_slice_image,
)

# --------------------------------------------------------------------------- helpers


def write_nifti(path: Path, zyx: np.ndarray, spacing=(2.5, 0.8, 0.7), affine=None) -> Path:
    """Write a (Z, H, W) array the way the phantom does: data (x, y, z), affine diag(sx, sy, sz)."""
    sz, sy, sx = spacing
    aff = np.diag([sx, sy, sz, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(zyx).transpose(2, 1, 0), aff), str(path))
    return path


def raw_nifti_bytes(xyz: np.ndarray, slope=1.0, inter=0.0) -> bytes:
    """An uncompressed single-file NIfTI-1, built by hand (header + 4-byte extension + data)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(xyz.dtype)
    hdr.set_data_shape(xyz.shape)
    hdr.set_sform(np.eye(4), code=1)
    hdr.set_qform(np.eye(4), code=1)
    hdr["scl_slope"] = slope
    hdr["scl_inter"] = inter
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\x00" * 4 + xyz.tobytes(order="F")


def png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(np.asarray(arr), mode=mode).save(path)
    return path


def assert_names(err: pytest.ExceptionInfo, path: Path | str, *words: str) -> None:
    msg = str(err.value)
    assert str(path) in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg


# --------------------------------------------------------------------------- read_nifti


def test_phantom_style_volume_round_trips_exactly(tmp_path):
    zyx = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) - 1000
    p = write_nifti(tmp_path / "v.nii.gz", zyx, spacing=(2.5, 0.8, 0.7))
    img, spacing = read_nifti(p)
    assert img.dtype == np.float32 and img.shape == (3, 4, 5)
    np.testing.assert_array_equal(img, zyx)
    assert spacing == pytest.approx((2.5, 0.8, 0.7))
    assert img.flags.c_contiguous


def test_flipped_x_axis_is_brought_to_canonical(tmp_path):
    zyx = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    # first voxel axis runs towards the patient's left (LAS): canonical flips it
    p = write_nifti(tmp_path / "las.nii.gz", zyx, affine=np.diag([-0.7, 0.8, 2.5, 1.0]))
    img, spacing = read_nifti(p)
    np.testing.assert_array_equal(img, zyx[:, :, ::-1])
    assert spacing == pytest.approx((2.5, 0.8, 0.7))


def test_permuted_axes_are_brought_to_z_y_x(tmp_path):
    # voxel axis i runs along z (S), j along y (A), k along x (R): the stored array is
    # already (z, y, x), so canonical + transpose must give it back unchanged.
    ijk = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    aff = np.array([[0, 0, 0.7, 0], [0, 0.8, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])
    p = tmp_path / "perm.nii.gz"
    nib.save(nib.Nifti1Image(ijk, aff), str(p))
    img, spacing = read_nifti(p)
    np.testing.assert_array_equal(img, ijk)
    assert spacing == pytest.approx((2.5, 0.8, 0.7))


def test_scl_slope_and_inter_are_applied(tmp_path):
    raw = np.array([0, 1, 500, 1000, 1512, 2047, 3, 4], dtype=np.int16).reshape(2, 2, 2)
    p = tmp_path / "scaled.nii"
    p.write_bytes(raw_nifti_bytes(raw, slope=2.0, inter=-1024.0))
    img, _ = read_nifti(p)
    np.testing.assert_array_equal(img, (raw.astype(np.float32) * 2 - 1024).transpose(2, 1, 0))
    assert img[0, 0, 0] == -1024 and img[0, 0, 1] == 2000  # img[z, y, x] = raw[x=1, 0, 0] = 1512


def test_trailing_singleton_4d_is_accepted(tmp_path):
    zyx = np.ones((2, 3, 4), np.float32)
    p = tmp_path / "v4.nii.gz"
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0)[..., None], np.eye(4)), str(p))
    assert read_nifti(p)[0].shape == (2, 3, 4)


def test_missing_nifti(tmp_path):
    p = tmp_path / "nope.nii.gz"
    with pytest.raises(DataError) as e:
        read_nifti(p)
    assert_names(e, p, "not found")


def _good_nifti_bytes(tmp_path) -> bytes:
    """The bytes of a valid small .nii.gz (8x16x16 float32 noise)."""
    good = tmp_path / "good.nii.gz"
    write_nifti(good, np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32))
    return good.read_bytes()


def test_corrupt_gzip(tmp_path):
    blob = bytearray(_good_nifti_bytes(tmp_path))
    blob[20:] = bytes((b ^ 0x5A) for b in blob[20:])  # valid gzip header, garbage deflate
    p = tmp_path / "corrupt.nii.gz"
    p.write_bytes(bytes(blob))
    with pytest.raises(DataError) as e:
        read_nifti(p)
    assert_names(e, p, "corrupt gzip")


def test_truncated_gzip(tmp_path):
    blob = _good_nifti_bytes(tmp_path)
    p = tmp_path / "truncated.nii.gz"
    p.write_bytes(blob[: len(blob) // 2])  # valid header, stream cut in half
    with pytest.raises(DataError) as e:
        read_nifti(p)
    assert_names(e, p, "truncated")


def test_truncated_uncompressed_nifti(tmp_path):
    full = raw_nifti_bytes(np.zeros((4, 4, 4), np.int16))
    p = tmp_path / "short.nii"
    p.write_bytes(full[: 352 + 10])  # header says 128 data bytes, only 10 present
    with pytest.raises(DataError) as e:
        read_nifti(p)
    assert_names(e, p, "truncated")


def test_truncated_header(tmp_path):
    p = tmp_path / "hdr.nii.gz"
    p.write_bytes(gzip.compress(raw_nifti_bytes(np.zeros((2, 2, 2), np.int16))[:100]))
    with pytest.raises(DataError) as e:
        read_nifti(p)
    assert_names(e, p)


def test_not_a_nifti(tmp_path):
    p = tmp_path / "text.nii.gz"
    p.write_text("hello")
    with pytest.raises(DataError) as e:
        read_nifti(p)
    assert_names(e, p)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 2), (2, 2, 2, 1, 3)])
def test_wrong_dimensionality(tmp_path, shape):
    p = tmp_path / "dims.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(p))
    with pytest.raises(DataError) as e:
        read_nifti(p)
    assert_names(e, p, "3D", str(shape))


def test_empty_volume(tmp_path):
    p = write_nifti(tmp_path / "empty.nii.gz", np.zeros((0, 4, 4), np.float32))
    with pytest.raises(DataError) as e:
        read_nifti(p)
    assert_names(e, p, "empty")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, bad):
    zyx = np.zeros((2, 3, 4), np.float32)
    zyx[1, 2, 3] = bad
    p = write_nifti(tmp_path / "nan.nii.gz", zyx)
    with pytest.raises(DataError) as e:
        read_nifti(p)
    assert_names(e, p, "non-finite", "1 non-finite")


def test_label_maps_must_hold_integers(tmp_path):
    m = np.zeros((1, 2, 2), np.float32)
    m[0, 0, 0] = 2
    labels, _ = read_nifti_labels(write_nifti(tmp_path / "ok.nii.gz", m))
    assert labels.dtype == np.int32 and labels[0, 0, 0] == 2
    m[0, 1, 1] = 0.5
    p = write_nifti(tmp_path / "frac.nii.gz", m)
    with pytest.raises(DataError) as e:
        read_nifti_labels(p)
    assert_names(e, p, "non-integer", "0.5")


# --------------------------------------------------------------------------- read_slice_image


def test_gray_png_image_and_mask(tmp_path):
    a = np.array([[0, 10], [200, 255]], np.uint8)
    p = png(tmp_path / "g.png", a)
    img = read_slice_image(p)
    assert img.dtype == np.float32
    np.testing.assert_array_equal(img, a.astype(np.float32))
    m = read_slice_image(png(tmp_path / "m.png", np.array([[0, 255], [255, 0]], np.uint8)),
                         "mask", mask_scale=255)
    assert m.dtype == np.uint8
    np.testing.assert_array_equal(m, [[0, 1], [1, 0]])


def test_rgb_and_rgba_become_gray(tmp_path):
    same = np.stack([np.array([[5, 250]], np.uint8)] * 3, axis=-1)
    np.testing.assert_array_equal(read_slice_image(png(tmp_path / "rgb.png", same)), [[5, 250]])
    rgba = np.concatenate([same, np.full((1, 2, 1), 128, np.uint8)], axis=-1)
    np.testing.assert_array_equal(read_slice_image(png(tmp_path / "rgba.png", rgba)), [[5, 250]])
    # true colour: ITU-R 601 luma, L = R*299/1000 + G*587/1000 + B*114/1000
    colour = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    gray = read_slice_image(png(tmp_path / "c.png", colour))
    np.testing.assert_array_equal(gray, [[76, 150, 29]])


def test_palette_mask_gives_indices(tmp_path):
    im = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    p = tmp_path / "pal.png"
    im.save(p)
    np.testing.assert_array_equal(read_slice_image(p, "mask"), [[0, 1], [2, 1]])


def test_colour_mask_with_differing_channels_is_refused(tmp_path):
    p = png(tmp_path / "cm.png", np.array([[[255, 0, 0], [0, 0, 0]]], np.uint8))
    with pytest.raises(DataError) as e:
        read_slice_image(p, "mask")
    assert_names(e, p, "colour")


def test_non_binary_mask_values_are_named(tmp_path):
    p = png(tmp_path / "soft.png", np.array([[0, 255, 128, 3]], np.uint8))
    with pytest.raises(DataError) as e:
        read_slice_image(p, "mask", mask_scale=255)
    assert_names(e, p, "[3, 128]", "mask_scale=255")


def test_jpeg_compressed_mask_is_refused(tmp_path):
    a = np.zeros((32, 32), np.uint8)
    a[8:20, 5:17] = 255
    p = tmp_path / "mask.jpg"
    Image.fromarray(a).save(p, quality=75)
    with pytest.raises(DataError) as e:
        read_slice_image(p, "mask", mask_scale=255)
    assert_names(e, p, "not multiples")


def test_truncated_jpeg_and_garbage(tmp_path):
    a = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    good = tmp_path / "good.jpg"
    Image.fromarray(a).save(good)
    p = tmp_path / "trunc.jpg"
    p.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError) as e:
        read_slice_image(p)
    assert_names(e, p, "cannot decode")
    q = tmp_path / "garbage.png"
    q.write_bytes(b"not an image at all")
    with pytest.raises(DataError) as e:
        read_slice_image(q)
    assert_names(e, q, "cannot decode")


def test_16_bit_png_is_refused(tmp_path):
    p = tmp_path / "i16.png"
    Image.fromarray(np.array([[0, 4000]], np.uint16)).save(p)
    with pytest.raises(DataError) as e:
        read_slice_image(p)
    assert_names(e, p, "8-bit")


def test_missing_slice(tmp_path):
    p = tmp_path / "missing.png"
    with pytest.raises(DataError) as e:
        read_slice_image(p, "mask")
    assert_names(e, p, "not found")


# --------------------------------------------------------------------------- load_cases


def manifest(fmt, groups, **kw):
    """A manifest-like object with the fields of the agreed YAML schema (see BRIEF)."""
    base = dict(
        name="toy",
        local_dir="toy",
        intensity="hu",
        label_map={0: "background", 1: "ground-glass", 2: "consolidation"},
        infection_labels=[1, 2],
        mask_scale=1,
        layout=SimpleNamespace(format=fmt, groups=[SimpleNamespace(**g) for g in groups]),
    )
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture
def volumes(tmp_path):
    d = tmp_path / "toy"
    (d / "img").mkdir(parents=True)
    (d / "inf").mkdir()
    (d / "lung").mkdir()
    rng = np.random.default_rng(0)
    for cid, z in (("c1", 3), ("c2", 4)):
        img = rng.normal(-500, 300, (z, 6, 5)).astype(np.float32).round()
        mask = np.zeros((z, 6, 5), np.float32)
        mask[1, 2:4, 1:3] = 1
        mask[-1, 0, 0] = 2
        lung = np.zeros((z, 6, 5), np.float32)
        lung[:, 1:5, 1:4] = 2  # Ma et al. style: 1/2 = left/right lung
        write_nifti(d / "img" / f"{cid}.nii.gz", img, spacing=(5.0, 0.6, 0.6))
        write_nifti(d / "inf" / f"{cid}.nii.gz", mask, spacing=(5.0, 0.6, 0.6))
        write_nifti(d / "lung" / f"{cid}.nii.gz", lung, spacing=(5.0, 0.6, 0.6))
    groups = [
        dict(name="train", image="img/{case}.nii.gz", mask="inf/{case}.nii.gz",
             lung="lung/{case}.nii.gz", cases=["c1"]),
        dict(name="test", image="img/{case}.nii.gz", mask="inf/{case}.nii.gz",
             lung="lung/{case}.nii.gz", cases=["c2"]),
    ]
    return tmp_path, d, groups


def test_load_nifti_volumes(volumes):
    root, _d, groups = volumes
    m = manifest("nifti-volumes", groups)
    cases = load_cases(m, root, progress=False)
    assert [c.case_id for c in cases] == ["c1", "c2"]
    c1 = cases[0]
    assert c1.image.shape == (3, 6, 5) and c1.image.dtype == np.float32
    assert c1.spacing == pytest.approx((5.0, 0.6, 0.6)) and c1.intensity == "hu"
    assert c1.mask.dtype == np.uint8 and set(np.unique(c1.mask)) == {0, 1, 2}
    assert int(c1.mask[1].sum()) == 4 and c1.mask[2, 0, 0] == 2
    assert set(np.unique(c1.lung)) == {0, 1}
    assert c1.meta["group"] == "train" and c1.meta["dataset"] == "toy"
    assert c1.meta["infection_labels"] == (1, 2)
    assert [c.case_id for c in load_cases(m, root, group="test", progress=False)] == ["c2"]
    assert [c.case_id for c in load_cases(m, root, cases=["c2"], progress=False)] == ["c2"]
    it = iter_cases(m, root, progress=False)
    assert next(it).case_id == "c1"  # a lazy generator


def test_case_glob_and_natural_order(volumes):
    root, _d, _ = volumes
    m = manifest("nifti-volumes", [dict(name="all", image="img/{case}.nii.gz",
                                        case_glob="img/*.nii.gz")])
    assert [c.case_id for c in load_cases(m, root, progress=False)] == ["c1", "c2"]


def test_nifti_stack_slices_become_cases(volumes):
    root, _d, groups = volumes
    m = manifest("nifti-stack", groups)
    cases = load_cases(m, root, group="test", progress=False)
    assert [c.case_id for c in cases] == ["c2_000", "c2_001", "c2_002", "c2_003"]
    assert all(c.image.shape == (1, 6, 5) for c in cases)
    assert cases[3].meta["stack"] == "c2" and cases[3].meta["source_z"] == 3
    assert cases[3].mask[0, 0, 0] == 2
    picked = load_cases(m, root, cases=["c1_001"], progress=False)
    assert [c.case_id for c in picked] == ["c1_001"]


def test_unknown_group_and_case(volumes):
    root, _, groups = volumes
    m = manifest("nifti-volumes", groups)
    with pytest.raises(DataError, match="unknown group"):
        load_cases(m, root, group="val", progress=False)
    with pytest.raises(DataError, match=r"unknown case id\(s\) \['c9'\]") as e:
        load_cases(m, root, cases=["c9"], progress=False)
    assert "toy" in str(e.value)


def test_missing_file_names_path_and_manifest(volumes):
    root, d, groups = volumes
    (d / "inf" / "c2.nii.gz").unlink()
    with pytest.raises(DataError) as e:
        load_cases(manifest("nifti-volumes", groups), root, progress=False)
    assert_names(e, d / "inf" / "c2.nii.gz", "missing mask", "manifest 'toy'", "c2")


def test_root_may_be_the_dataset_folder_itself(volumes):
    root, d, groups = volumes
    m = manifest("nifti-volumes", groups)
    ids = [c.case_id for c in load_cases(m, d, progress=False)]
    assert ids == [c.case_id for c in load_cases(m, root, progress=False)] == ["c1", "c2"]


def test_missing_dataset_folder(tmp_path):
    m = manifest("nifti-volumes", [dict(name="a", image="{case}.nii.gz", cases=["x"])])
    with pytest.raises(DataError) as e:
        load_cases(m, tmp_path / "nowhere", progress=False)
    assert_names(e, tmp_path / "nowhere", "not found")


def test_image_mask_shape_mismatch_names_both_files(volumes):
    root, d, groups = volumes
    write_nifti(d / "inf" / "c1.nii.gz", np.zeros((2, 6, 5), np.float32))
    with pytest.raises(DataError) as e:
        load_cases(manifest("nifti-volumes", groups), root, progress=False)
    assert_names(e, d / "inf" / "c1.nii.gz", str(d / "img" / "c1.nii.gz"), "(2, 6, 5)", "(3, 6, 5)")


def test_unknown_label_values_are_named(volumes):
    root, d, groups = volumes
    bad = np.zeros((3, 6, 5), np.float32)
    bad[0, 0, :2] = [3, 7]
    write_nifti(d / "inf" / "c1.nii.gz", bad, spacing=(5.0, 0.6, 0.6))
    with pytest.raises(DataError) as e:
        load_cases(manifest("nifti-volumes", groups), root, progress=False)
    assert_names(e, d / "inf" / "c1.nii.gz", "unknown label values [3, 7]")


def test_nan_in_a_case_names_the_file(volumes):
    root, d, groups = volumes
    img = np.zeros((3, 6, 5), np.float32)
    img[0, 0, 0] = np.nan
    write_nifti(d / "img" / "c2.nii.gz", img)
    with pytest.raises(DataError) as e:
        load_cases(manifest("nifti-volumes", groups), root, progress=False)
    assert_names(e, d / "img" / "c2.nii.gz", "NaN")


def test_case_glob_id_is_the_text_matched_by_the_star(volumes):
    root, d, _ = volumes
    for cid in ("c1", "c2"):
        os.replace(d / "img" / f"{cid}.nii.gz", d / "img" / f"vol-{cid}_ct.nii.gz")
    m = manifest("nifti-volumes", [dict(name="all", image="img/vol-{case}_ct.nii.gz",
                                        case_glob="img/vol-*_ct.nii.gz")])
    assert [c.case_id for c in load_cases(m, root, progress=False)] == ["c1", "c2"]


def test_group_extras_teacher_intensity_organs(volumes):
    root, d, groups = volumes
    organs = np.zeros((3, 6, 5), np.float32)
    organs[0, 0, 0] = 4
    write_nifti(d / "inf" / "org.nii.gz", organs, spacing=(5.0, 0.6, 0.6))
    g = dict(groups[0], organs="inf/org.nii.gz", teacher="lung/{case}.nii.gz",
             labels="noisy-teacher", intensity="uint8", site="site-A")
    m = manifest("nifti-volumes", [g], organ_map={1: "lung", 4: "heart"})
    (case,) = load_cases(m, root, progress=False)
    assert case.intensity == "uint8" and case.site == "site-A"  # group overrides
    assert case.meta["labels"] == "noisy-teacher"
    assert case.meta["teacher_path"] == str(d / "lung" / "c1.nii.gz")  # path only, not read
    assert case.organs.dtype == np.uint8 and case.organs[0, 0, 0] == 4
    m.organ_map = {1: "lung"}
    with pytest.raises(DataError) as e:
        load_cases(m, root, progress=False)
    assert_names(e, d / "inf" / "org.nii.gz", "unknown label values [4]", "organ_map")


def test_alt_mask_uses_its_own_label_map(volumes):
    root, d, groups = volumes
    alt = np.zeros((3, 6, 5), np.float32)
    alt[0, 0, 0] = 9
    write_nifti(d / "inf" / "alt_c1.nii.gz", alt, spacing=(5.0, 0.6, 0.6))
    g = dict(groups[0], alt_masks={"fine": SimpleNamespace(path="inf/alt_{case}.nii.gz",
                                                           label_map={0: "bg", 9: "x"},
                                                           mask_scale=1)})
    m = manifest("nifti-volumes", [g])
    (case,) = load_cases(m, root, alt_mask="fine", progress=False)
    assert case.mask[0, 0, 0] == 9 and case.meta["alt_mask"] == "fine"
    assert case.meta["infection_labels"] == (9,)
    with pytest.raises(DataError, match="no alt mask 'coarse'"):
        load_cases(m, root, alt_mask="coarse", progress=False)


def test_unreadable_format_is_refused(volumes):
    root, _, groups = volumes
    with pytest.raises(DataError, match="dicom-rtstruct"):
        load_cases(manifest("dicom-rtstruct", groups), root, progress=False)


@pytest.fixture
def slices(tmp_path):
    d = tmp_path / "toy"
    (d / "Imgs").mkdir(parents=True)
    (d / "GT").mkdir()
    for i, (h, w) in enumerate([(4, 5), (6, 3), (5, 5)]):
        img = (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)
        Image.fromarray(img).save(d / "Imgs" / f"{i * 5}.jpg", quality=100)
        m = np.zeros((h, w), np.uint8)
        m[1:3, 1:3] = 255
        png(d / "GT" / f"{i * 5}.png", m)
    groups = [dict(name="train", image="Imgs/{case}.jpg", mask="GT/{case}.png",
                   case_glob="Imgs/*.jpg")]
    return tmp_path, d, manifest("image-slices", groups, intensity="uint8", mask_scale=255,
                                 label_map={0: "background", 1: "infection"},
                                 infection_labels=[1])


def test_image_slices(slices):
    root, _d, m = slices
    cases = load_cases(m, root, progress=False)
    assert [c.case_id for c in cases] == ["0", "5", "10"]  # natural, not lexical, order
    assert [c.image.shape for c in cases] == [(1, 4, 5), (1, 6, 3), (1, 5, 5)]
    for c in cases:
        assert c.intensity == "uint8" and all(math.isnan(s) for s in c.spacing)
        assert c.image.dtype == np.float32 and 0 <= c.image.min() and c.image.max() <= 255
        assert c.mask.shape == c.image.shape and int(c.mask.sum()) == 4
        assert set(np.unique(c.mask)) == {0, 1}


def test_image_slice_shape_mismatch(slices):
    root, d, m = slices
    png(d / "GT" / "5.png", np.zeros((6, 4), np.uint8))
    with pytest.raises(DataError) as e:
        load_cases(m, root, progress=False)
    assert_names(e, d / "GT" / "5.png", str(d / "Imgs" / "5.jpg"), "(1, 6, 4)", "(1, 6, 3)")


def test_image_slice_unknown_label(slices):
    root, d, m = slices
    m.mask_scale = 1  # {0, 255} read as labels -> 255 is not in the label map
    with pytest.raises(DataError) as e:
        load_cases(m, root, progress=False)
    assert_names(e, d / "GT" / "0.png", "unknown label values [255]")


# --------------------------------------------------------------------------- real data


def shared_semiseg() -> Path:
    root = Path(os.environ.get("COVIDLIB_SHARED_DATA",
                               Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    d = root / "covid-semiseg" / "Dataset"
    if not d.is_dir():
        pytest.skip(f"real COVID-SemiSeg data not found at {d} (set COVIDLIB_SHARED_DATA)")
    return d


REAL_SETS = {
    "train": ("TrainingSet/LungInfection-Train/Doctor-label", 50),
    "test": ("TestingSet/LungInfection-Test", 48),
}


@pytest.mark.realdata
@pytest.mark.parametrize("part", ["train", "test"])
def test_real_covid_semiseg_binary_sets(part):
    sub, n = REAL_SETS[part]
    d = shared_semiseg() / sub
    imgs = sorted((d / "Imgs").glob("*.jpg"))
    assert len(imgs) == n
    sizes = set()
    for p in imgs:
        img = read_slice_image(p)
        mask = read_slice_image(d / "GT" / f"{p.stem}.png", "mask", mask_scale=255)
        assert img.dtype == np.float32 and img.ndim == 2
        assert 0 <= img.min() and img.max() <= 255 and img.max() > 100
        assert mask.shape == img.shape
        assert set(np.unique(mask)) == {0, 1}  # every usable slice has infection (P2 Table 1)
        sizes.add(img.shape)
    assert len(sizes) > 10  # sizes vary per image (cropped to the lung box)


@pytest.mark.realdata
def test_real_multiclass_masks_are_palette_labels():
    d = shared_semiseg() / "TestingSet/MultiClassInfection-Test"
    values = set()
    for p in sorted((d / "GT").glob("*.png"))[:12]:
        m = read_slice_image(p, "mask")
        values |= set(np.unique(m).tolist())
        binary = read_slice_image(
            shared_semiseg() / "TestingSet/LungInfection-Test/GT" / p.name, "mask", mask_scale=255
        )
        np.testing.assert_array_equal(m > 0, binary > 0)  # classes 1+2 == binary infection
    assert values == {0, 1, 2}


@pytest.mark.realdata
def test_real_pseudo_label_masks_are_soft_and_refused_as_labels():
    d = shared_semiseg() / "TrainingSet/LungInfection-Train/Pseudo-label"
    p = d / "GT" / "Data-1_coronacases_org_001_1.png"
    with pytest.raises(DataError) as e:
        read_slice_image(p, "mask", mask_scale=255)
    assert_names(e, p, "not multiples")
    img = read_slice_image(d / "Imgs" / "Data-1_coronacases_org_001_1.jpg")
    assert img.shape == (320, 235)
    assert re.fullmatch(r"Data-1_(coronacases|radiopaedia)_org_\d+_\d+", p.stem)


# --------------------------------------------------------------------------- real manifests


@pytest.mark.realdata
def test_real_covid_semiseg_through_its_manifest():
    from covidlib.data.manifest import load_manifest

    root = shared_semiseg().parent.parent  # the data root holding covid-semiseg/
    m = load_manifest("covid-semiseg")
    train = load_cases(m, root, group="train", progress=False)
    test = load_cases(m, root, group="test", progress=False)
    assert (len(train), len(test)) == (50, 48)
    for c in train + test:
        assert c.image.shape[0] == 1 and c.mask.shape == c.image.shape
        assert c.intensity == "uint8" and math.isnan(c.spacing[0])
        assert c.mask.dtype == np.uint8 and set(np.unique(c.mask)) == {0, 1}
        assert c.meta["labels"] == "expert" and c.meta["infection_labels"] == (1,)
    assert train[0].case_id == "0" and test[-1].case_id == "99"
    multi = load_cases(m, root, group="test", cases=["6", "7", "8"], alt_mask="multiclass",
                       progress=False)
    assert set(np.unique(np.concatenate([c.mask.ravel() for c in multi]))) <= {0, 1, 2}
    for c, b in zip(multi, test[:3], strict=True):
        np.testing.assert_array_equal(c.mask > 0, b.mask > 0)


@pytest.mark.realdata
def test_real_pseudo_label_pool_streams_without_masks():
    from covidlib.data.manifest import load_manifest

    root = shared_semiseg().parent.parent
    m = load_manifest("covid-semiseg")
    it = iter_cases(m, root, group="pseudo-label", progress=False)
    first = [next(it) for _ in range(3)]
    assert [c.case_id for c in first] == [f"Data-1_coronacases_org_001_{k}" for k in (1, 2, 3)]
    for c in first:
        assert c.mask is None and c.meta["labels"] == "noisy-teacher"
        assert c.meta["teacher_path"].endswith(f"Pseudo-label/GT/{c.case_id}.png")


def test_synthetic_phantom_round_trips_through_its_manifest(tmp_path):
    from covidlib.data.manifest import load_manifest
    from covidlib.data.phantom import PhantomConfig, generate_case, write_dataset

    cfg = PhantomConfig(n_cases=2, shape=(8, 48, 48))
    write_dataset(cfg, tmp_path / "synthetic", progress=False, workers=1)
    m = load_manifest("synthetic")
    cases = load_cases(m, tmp_path, cases=["synth_000", "synth_001"], progress=False)
    for i, c in enumerate(cases):
        g = generate_case(cfg, i)
        assert c.case_id == g.case_id
        np.testing.assert_array_equal(c.image, g.image)  # exact: int16 HU, RAS+ diagonal
        np.testing.assert_array_equal(c.mask, g.mask)
        np.testing.assert_array_equal(c.organs, g.organs)
        np.testing.assert_array_equal(c.lung, (g.lung != 0).astype(np.uint8))
        assert c.spacing == pytest.approx(g.spacing, rel=1e-6)  # header stores float32


# --------------------------------------------------------------------------- issue 16 item 5/6
@pytest.mark.parametrize("how", ["flipped x", "other spacing", "shifted origin"])
def test_mask_affine_must_agree_with_the_image(volumes, how):
    """A mask on another grid used to come back mirrored / misplaced without a word."""
    root, d, groups = volumes
    mask = nib.load(str(d / "inf" / "c1.nii.gz"))
    aff = mask.affine.copy()
    if how == "flipped x":
        aff[0, 0], aff[0, 3] = -aff[0, 0], aff[0, 0] * 4  # same extent, x axis reversed
    elif how == "other spacing":
        aff[2, 2] = 2.5
    else:
        aff[1, 3] = 3.0
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj), aff), str(d / "inf" / "c1.nii.gz"))
    with pytest.raises(DataError) as e:
        load_cases(manifest("nifti-volumes", groups), root, progress=False)
    assert_names(e, d / "inf" / "c1.nii.gz", str(d / "img" / "c1.nii.gz"), "affine differs")


def test_mask_affine_rounding_noise_is_accepted(volumes):
    root, d, groups = volumes
    mask = nib.load(str(d / "inf" / "c1.nii.gz"))
    aff = mask.affine + 1e-6
    aff[3] = [0, 0, 0, 1]
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj), aff), str(d / "inf" / "c1.nii.gz"))
    (case,) = load_cases(manifest("nifti-volumes", groups), root, cases=["c1"], progress=False)
    assert case.mask[1, 2:4, 1:3].all()


def _png16(path: Path, arr: np.ndarray, colour: int) -> Path:
    """A 16-bit PNG written byte by byte (Pillow cannot write 48-bit RGB)."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("colour,shape", [(2, (4, 4, 3)), (0, (4, 4))])
def test_16_bit_png_is_rejected_not_truncated(tmp_path, colour, shape):
    """Pillow keeps only the high byte of a 16-bit RGB PNG (1000 -> 3) without a word."""
    p = _png16(tmp_path / "deep.png", np.full(shape, 1000, np.uint16), colour)
    for kind in ("image", "mask"):
        with pytest.raises(DataError) as e:
            read_slice_image(p, kind)
        assert_names(e, p, "16-bit", "8 bit")


def test_slice_far_smaller_than_the_model_grid_is_rejected():
    from covidlib.data.preprocess import MAX_UPSCALE, check_upscale, preprocess_slice

    one = np.ones((1, 1), np.uint8)
    with pytest.raises(DataError, match=r"1 x 1 pixels is too small for the model grid 64 x 64"):
        preprocess_slice(one * 200, one, "uint8", size=64)
    check_upscale((8, 8), 64)  # exactly MAX_UPSCALE: accepted
    assert MAX_UPSCALE == 8
    with pytest.raises(DataError, match="at least 8 x 8"):
        check_upscale((7, 8), 64)
    image, mask = preprocess_slice(np.full((256, 256), 9.0), np.ones((256, 256), np.uint8),
                                   "uint8", size=352)  # ma20-slices into P2's grid: fine
    assert image.shape == (3, 352, 352) and mask.all()


def test_slice_dataset_rejects_a_tiny_slice():
    from covidlib.data.torch_datasets import SliceDataset
    from covidlib.data.types import Case

    tiny = Case("t", np.zeros((1, 1, 1), np.float32), mask=np.ones((1, 1, 1), np.uint8),
                intensity="uint8")
    with pytest.raises(DataError, match=r"case 't' slice 0.*too small"):
        SliceDataset([tiny], [("t", 0)], size=64)


def test_symlink_loop_is_reported_as_such(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(DataError, match="symlink loop"):
        read_slice_image(a)
    with pytest.raises(DataError, match="symlink loop"):
        read_nifti(a)
    dangling = tmp_path / "c.png"
    dangling.symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match="broken symlink"):
        read_slice_image(dangling)


def test_symlink_loop_in_a_layout_names_the_case(tmp_path):
    d = tmp_path / "toy"
    (d / "img").mkdir(parents=True)
    png(d / "img" / "s1.png", np.zeros((4, 4), np.uint8))
    (d / "gt").mkdir()
    (d / "gt" / "s1.png").symlink_to(d / "gt" / "s1.png")
    m = manifest("image-slices", [dict(name="all", image="img/{case}.png",
                                       mask="gt/{case}.png", cases=["s1"])], mask_scale=255)
    with pytest.raises(DataError) as e:
        load_cases(m, tmp_path, progress=False)
    assert_names(e, d / "gt" / "s1.png", "missing mask file of case 's1'", "symlink loop")
