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
    assert [line.split()[0] for line in lines] == [
        "covid-semiseg", "covid19-20", "lctsc", "ma-20", "medseg-100", "medseg-9", "synthetic"]
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
