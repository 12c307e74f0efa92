"""The covidlib command line."""

import os
from pathlib import Path

import pytest

from covidlib.cli import main

SHARED = Path(os.environ.get("COVIDLIB_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_data_list_shows_every_manifest_and_where_it_is(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVIDLIB_DATA_PATH", str(tmp_path))
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from covidlib.data.manifest import list_datasets

    assert [line.split()[0] for line in lines] == list_datasets()
    assert {"covid-semiseg", "ma-20", "ma20-slices", "synthetic"} <= set(list_datasets())
    assert all(line.endswith("not present") for line in lines)


def test_missing_name_and_unavailable_data_are_clear_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVIDLIB_DATA_PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="needs a dataset name"):
        main(["data", "stats"])
    assert main(["data", "fetch", "covid19-20"]) == 2  # registration-only: manual placement
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "covid19-20" in err


def test_stats_of_the_real_covid_semiseg_slices(monkeypatch, capsys):
    if not (SHARED / "covid-semiseg").is_dir():
        pytest.skip(f"real data not found at {SHARED / 'covid-semiseg'} (set COVIDLIB_SHARED_DATA)")
    monkeypatch.setenv("COVIDLIB_DATA_PATH", str(SHARED))
    assert main(["data", "stats", "covid-semiseg"]) == 0
    out = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert out["slices"] == "98" and out["slices_with_infection"] == "98"
    assert out["infected_regions"] == "779" and out["cases"] == "None"


# ---------------------------------------------------------------------- issue 16, case 6


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpux"], "error: device='gpux': choose auto, cpu, cuda, cuda:N or mps"),
    (["--profile", "fast"], "error: profile='fast': choose one of cpu, reference, gpu, paper"),
])
def test_book_parameters_are_checked_before_any_work(argv, message, monkeypatch, capsys):
    from covidlib.report import book

    def never(*a, **k):
        raise AssertionError("the book started with a bad parameter")

    monkeypatch.setattr(book, "execute_plan", never)
    assert main(["book", "--no-html", *argv]) == 2
    assert capsys.readouterr().err.strip() == message


def test_cuda_without_a_cuda_device_is_refused_by_name(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["book", "--no-html", "--device", "cuda"]) == 2
    assert "no CUDA device was found on this machine" in capsys.readouterr().err


def test_validate_checks_every_parameter_in_one_place():
    from covidlib.params import ParameterError, Params, validate

    assert validate("cpu", "auto", [0, 1], "synthetic") == Params("cpu", "auto", (0, 1),
                                                                  "synthetic")
    assert validate(seeds=3).seeds == (3,)
    with pytest.raises(ParameterError, match=r"seeds=\[\]: give at least one seed"):
        validate(seeds=[])
    with pytest.raises(ParameterError, match=r"seeds=\[0, -1, True\]: \[-1, True\] are not"):
        validate(seeds=[0, -1, True])
    with pytest.raises(ParameterError, match=r"seeds=\[1, 1\]: a seed is repeated"):
        validate(seeds=[1, 1])
    with pytest.raises(ParameterError, match=r"profile='CPU': choose one of cpu, reference"):
        validate(profile="CPU")
    with pytest.raises(ParameterError, match=r"dataset='synthtic': choose one of auto, .*"
                                             r"synthetic"):
        validate(dataset="synthtic")
    assert validate(dataset="real", datasets=("auto", "real")).dataset == "real"

