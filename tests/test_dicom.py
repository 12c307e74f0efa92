"""LCTSC DICOM CT + RTSTRUCT -> NIfTI conversion (covidlib.data.dicom) on a tiny synthetic
patient written with pydicom in TCIA's folder layout, checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage  # noqa: E402

from covidlib.cli import main  # noqa: E402
from covidlib.data import dicom  # noqa: E402
from covidlib.data.errors import DataError  # noqa: E402
from covidlib.data.readers import read_nifti, read_nifti_labels  # noqa: E402

PID = "LCTSC-Train-S1-001"
STUDY, CT_SERIES, RT_SERIES, FOR = "1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"
H = W = 16
ORIGIN = (-100.0, -120.0, -50.0)  # LPS mm of the first pixel of the lowest slice
DR, DC, DZ = 0.8, 0.7, 2.5  # row spacing, column spacing, slice spacing (mm)
IOP = (1, 0, 0, 0, 1, 0)  # the usual axial orientation (rows along +x, columns along +y)
ORGAN_MAP = {1: "SpinalCord", 2: "Lung_R", 3: "Lung_L", 4: "Heart", 5: "Esophagus"}


def _stored(k: int) -> np.ndarray:
    """Stored pixel values of slice k: k*256 + row*16 + col (HU = stored - 1024)."""
    i, j = np.mgrid[:H, :W]
    return (k * 256 + i * 16 + j).astype(np.uint16)


def _base(sop_class: str, sop: str, series: str, modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop, modality
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = PID, STUDY, series
    ds.FrameOfReferenceUID = FOR
    return ds


def _write_ct(folder: Path, k: int, z: float, slope: float = 1.0, iop=IOP) -> None:
    ds = _base(CTImageStorage, f"{CT_SERIES}.{k}", CT_SERIES, "CT")
    ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], z]
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = [DR, DC]
    ds.Rows, ds.Columns, ds.SamplesPerPixel = H, W, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, -1024
    ds.InstanceNumber = k + 1
    ds.PixelData = _stored(k).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    # file names in reverse slice order: the converter must sort by position, not by name
    ds.save_as(folder / f"1-{99 - k:02d}.dcm", enforce_file_format=True)


def _square(k: int, rows: tuple[float, float], cols: tuple[float, float], iop=IOP) -> Dataset:
    """A CLOSED_PLANAR contour through the pixel centres (row, col) of the rectangle's corners
    on slice k, in LPS mm."""
    (r0, r1), (c0, c1) = rows, cols
    pts = []
    for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0)):
        p = np.add(ORIGIN, [0, 0, k * DZ]) + c * DC * np.array(iop[:3]) + r * DR * np.array(iop[3:])
        pts += [float(v) for v in p]
    ct = Dataset()
    ct.ContourGeometricType, ct.NumberOfContourPoints, ct.ContourData = "CLOSED_PLANAR", 4, pts
    return ct


#: ROI number -> (name, {slice: [(rows, cols), ...]}); "spinal cord" is the variant spelling,
#: Heart has a hole on slice 2 and overlaps the cord on slice 1; "Body" is not an organ.
ROIS = {
    1: ("Heart", {1: [((4, 8), (5, 10))], 2: [((4, 8), (5, 10)), ((5, 7), (6, 9))]}),
    2: ("spinal cord", {0: [((8, 11), (9, 12))], 1: [((8, 11), (9, 12))]}),
    3: ("Body", {k: [((0, 15), (0, 15))] for k in range(4)}),
}


def _write_rt(folder: Path, ref_series: str = CT_SERIES, rois=ROIS, iop=IOP) -> None:
    ds = _base(RTStructureSetStorage, f"{RT_SERIES}.1", RT_SERIES, "RTSTRUCT")
    se = Dataset()
    se.SeriesInstanceUID = ref_series
    st = Dataset()
    st.ReferencedSOPInstanceUID, st.RTReferencedSeriesSequence = STUDY, Sequence([se])
    fr = Dataset()
    fr.FrameOfReferenceUID, fr.RTReferencedStudySequence = FOR, Sequence([st])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    names, contours = [], []
    for n, (name, by_slice) in rois.items():
        r = Dataset()
        r.ROINumber, r.ROIName, r.ReferencedFrameOfReferenceUID = n, name, FOR
        names.append(r)
        c = Dataset()
        c.ReferencedROINumber = n
        c.ContourSequence = Sequence([_square(k, rr, cc, iop) for k, sq in by_slice.items()
                                      for rr, cc in sq])
        contours.append(c)
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(names), Sequence(contours)
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "1-1.dcm", enforce_file_format=True)


def make_patient(root: Path, pid: str = PID, zs=(0.0, 2.5, 5.0, 7.5), rt: bool = True,
                 ref_series: str = CT_SERIES, slope: float = 1.0, iop=IOP) -> Path:
    """root/LCTSC/<pid>/<StudyUID>/<SeriesUID>/*.dcm (TCIA's layout); slice k at
    z = ORIGIN z + zs[k]."""
    patient = root / "LCTSC" / pid
    for k, dz in enumerate(zs):
        _write_ct(patient / STUDY / CT_SERIES, k, ORIGIN[2] + dz, slope, iop)
    if rt:
        _write_rt(patient / STUDY / RT_SERIES, ref_series, iop=iop)
    return patient


def _expected_organs() -> np.ndarray:
    """Hand-computed label map (k, row, col): corners inclusive (pixel centres on the contour
    count), hole by exclusive or, Heart (4) painted over SpinalCord (1)."""
    out = np.zeros((4, H, W), np.uint8)
    out[0, 8:12, 9:13] = 1
    out[1, 8:12, 9:13] = 1
    out[1, 4:9, 5:11] = 4
    out[2, 4:9, 5:11] = 4
    out[2, 5:8, 6:10] = 0
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("tcia")
    make_patient(root)
    out = root / "out" / PID
    rep = dicom.convert_patient(root / "LCTSC" / PID, out, ORGAN_MAP)
    return rep, out


def test_hu_values_and_slice_order(converted):
    rep, out = converted
    assert rep.status == "converted" and rep.shape == (4, H, W)
    img = nib.load(out / "image.nii.gz")
    data = np.asarray(img.dataobj)  # (col, row, k)
    assert data.dtype == np.int16
    want = np.stack([_stored(k).astype(int) - 1024 for k in range(4)])  # (k, row, col)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), want)
    assert data[3, 2, 1] == 1 * 256 + 2 * 16 + 3 - 1024  # col 3, row 2, slice 1


def test_affine_hand_computed(converted):
    _, out = converted
    want = np.array([[-DC, 0, 0, 100.0], [0, -DR, 0, 120.0], [0, 0, DZ, -50.0], [0, 0, 0, 1]])
    for name in ("image.nii.gz", "organs.nii.gz"):
        img = nib.load(out / name)
        np.testing.assert_allclose(img.affine, want, atol=1e-6)
        assert img.header.get_sform(coded=True)[1] == 1


def test_flipped_orientation_affine_and_masks(tmp_path):
    """Rows along -x, columns along -y (normal still +z): the RAS affine loses its minus
    signs, the voxel-space masks stay the same and read_nifti no longer flips x and y."""
    make_patient(tmp_path, iop=(-1, 0, 0, 0, -1, 0))
    out = tmp_path / "o"
    dicom.convert_patient(tmp_path / "LCTSC" / PID, out, ORGAN_MAP)
    want = np.array([[DC, 0, 0, 100.0], [0, DR, 0, 120.0], [0, 0, DZ, -50.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(nib.load(out / "organs.nii.gz").affine, want, atol=1e-6)
    np.testing.assert_array_equal(read_nifti_labels(out / "organs.nii.gz")[0], _expected_organs())


def test_read_back_with_covidlib_readers(converted):
    """read_nifti canonicalises (RAS+): x and y flip, so image[z, y, x] = HU[z, H-1-y, W-1-x]."""
    _, out = converted
    img, spacing = read_nifti(out / "image.nii.gz")
    assert spacing == pytest.approx((DZ, DR, DC))
    want = np.stack([_stored(k).astype(float) - 1024 for k in range(4)])
    np.testing.assert_array_equal(img, want[:, ::-1, ::-1])
    labels, _ = read_nifti_labels(out / "organs.nii.gz")
    np.testing.assert_array_equal(labels, _expected_organs()[:, ::-1, ::-1])


def test_rasterised_masks_and_roi_report(converted):
    rep, out = converted
    organs = np.asarray(nib.load(out / "organs.nii.gz").dataobj).transpose(2, 1, 0)
    assert organs.dtype == np.uint8
    np.testing.assert_array_equal(organs, _expected_organs())
    assert int((organs == 4).sum()) == 30 + 30 - 12  # two 5x6 squares, a 3x4 hole
    assert rep.rois == {"Heart": 4, "spinal cord": 1}
    assert rep.unknown_rois == ["Body"]
    assert rep.missing_organs == ["Lung_R", "Lung_L", "Esophagus"]
    side = json.loads((out / dicom.SIDECAR).read_text())
    assert side["ct_series"] == CT_SERIES and side["unknown_rois"] == ["Body"]


def test_non_integer_hu_stored_as_float(tmp_path):
    make_patient(tmp_path, slope=0.5)
    dicom.convert_patient(tmp_path / "LCTSC" / PID, tmp_path / "o", ORGAN_MAP)
    data = np.asarray(nib.load(tmp_path / "o" / "image.nii.gz").dataobj).transpose(2, 1, 0)
    assert data.dtype == np.float32
    assert data[1, 0, 1] == pytest.approx((256 + 1) * 0.5 - 1024)


def test_roi_name_variants_and_ambiguity():
    labels, unknown = dicom.match_rois(
        {1: "LUNG_R", 2: "Lung_l ", 3: "Spinal_Cord", 4: "heart", 5: "Oesophagus", 6: "PTV"},
        ORGAN_MAP, "rt.dcm")
    assert labels == {1: 2, 2: 3, 3: 1, 4: 4, 5: 5} and unknown == ["PTV"]
    with pytest.raises(DataError, match="'Heart' and 'HEART' both name the organ 'Heart'"):
        dicom.match_rois({1: "Heart", 2: "HEART"}, ORGAN_MAP, "rt.dcm")


@pytest.mark.parametrize("kwargs, message", [
    ({"rt": False}, "no RTSTRUCT file in this patient folder"),
    ({"ref_series": "9.9.9"}, "references series.*9.9.9.*belongs to another series"),
    ({"zs": (0.0, 2.5, 5.0, 8.0)}, "non-uniform slice spacing: gap 3.00 mm"),
    ({"zs": (0.0, 2.5, 7.5, 10.0)}, r"missing slices: a gap of 5.00 mm .* \(1 slice\(s\) missing"),
    ({"zs": (0.0, 2.5, 2.5, 5.0)}, "duplicate slices"),
])
def test_errors_name_the_problem(tmp_path, kwargs, message):
    patient = make_patient(tmp_path, **kwargs)
    with pytest.raises(DataError, match=message) as e:
        dicom.convert_patient(patient, tmp_path / "o", ORGAN_MAP)
    assert str(patient) in str(e.value)
    assert not (tmp_path / "o").exists()


def test_no_half_written_outputs(tmp_path, monkeypatch):
    """A failure while writing the second file leaves neither file nor a temporary folder."""
    make_patient(tmp_path)
    calls = []

    def failing_save(img, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(img, path)

    real_save = nib.save
    monkeypatch.setattr(nib, "save", failing_save)
    out = tmp_path / "nifti" / PID
    with pytest.raises(OSError, match="disk full"):
        dicom.convert_patient(tmp_path / "LCTSC" / PID, out, ORGAN_MAP)
    assert not out.exists() and list((tmp_path / "nifti").iterdir()) == []
    # redoing a converted patient that fails midway keeps the previous outputs
    monkeypatch.setattr(nib, "save", real_save)
    dicom.convert_patient(tmp_path / "LCTSC" / PID, out, ORGAN_MAP)
    calls.clear()
    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        dicom.convert_patient(tmp_path / "LCTSC" / PID, out, ORGAN_MAP, force=True)
    assert sorted(p.name for p in (tmp_path / "nifti").iterdir()) == [PID]
    assert read_nifti_labels(out / "organs.nii.gz")[0].shape == (4, H, W)


def test_convert_lctsc_resumes_and_continues_past_failures(tmp_path):
    make_patient(tmp_path)
    make_patient(tmp_path, pid="LCTSC-Train-S1-002", rt=False)
    root = tmp_path / "data"
    reps = dicom.convert_lctsc(tmp_path, root, progress=False)
    assert [(r.patient, r.status) for r in reps] == [(PID, "converted"),
                                                    ("LCTSC-Train-S1-002", "failed")]
    assert "no RTSTRUCT" in reps[1].error
    out = root / "lctsc" / "nifti" / PID
    assert (out / "image.nii.gz").is_file() and (out / "organs.nii.gz").is_file()
    # resume: verified and skipped; a damaged output is converted again
    assert dicom.convert_lctsc(tmp_path / "LCTSC", root, progress=False)[0].status == "skipped"
    (out / "organs.nii.gz").write_bytes(b"\x1f\x8b broken")
    again = dicom.convert_lctsc(tmp_path, root, progress=False)[0]
    assert again.status == "converted"
    np.testing.assert_array_equal(read_nifti_labels(out / "organs.nii.gz")[0],
                                  _expected_organs()[:, ::-1, ::-1])
    # outputs another tool wrote (no sidecar) are kept unless forced
    (out / dicom.SIDECAR).unlink()
    kept = dicom.convert_lctsc(tmp_path, root, progress=False)[0]
    assert kept.status == "skipped" and "written by another tool" in kept.notes[0]
    assert dicom.convert_lctsc(tmp_path, root, force=True, progress=False)[0].status == "converted"
    assert (out / dicom.SIDECAR).is_file()


def test_cli_convert(tmp_path, capsys):
    make_patient(tmp_path)
    root = tmp_path / "data"
    assert main(["data", "convert", "lctsc", "--source", str(tmp_path), "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "unknown ROI 'Body' not painted" in text and "1 converted, 0 already done" in text
    assert (root / "lctsc" / "nifti" / PID / "organs.nii.gz").is_file()
    assert main(["data", "convert", "lctsc", "--source", str(tmp_path), "--root", str(root)]) == 0
    assert "0 converted, 1 already done" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs --source"):
        main(["data", "convert", "lctsc", "--root", str(root)])


def test_contour_between_slices_is_an_error(tmp_path):
    patient = make_patient(tmp_path, rt=False)
    _write_rt(patient / STUDY / RT_SERIES, rois={1: ("Heart", {1.5: [((4, 8), (5, 10))]})})
    with pytest.raises(DataError, match=r"contour at -46.25 mm does not lie on a CT slice"):
        dicom.convert_patient(patient, tmp_path / "o", ORGAN_MAP)


def test_find_patients_accepts_each_level(tmp_path):
    patient = make_patient(tmp_path)
    assert dicom.find_patients(tmp_path) == [patient]
    assert dicom.find_patients(tmp_path / "LCTSC") == [patient]
    assert dicom.find_patients(patient) == [patient]
    with pytest.raises(DataError, match=rf"no patient folders \(LCTSC-...\) .*found folders "
                                        rf"{CT_SERIES}, {RT_SERIES}\)"):
        dicom.find_patients(patient / STUDY)  # one level too deep
