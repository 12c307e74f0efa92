"""The data layer: manifests, downloads, readers, preprocessing, statistics, phantom, oracle.

Typical use::

    from covidlib.data import open_dataset
    ds = open_dataset("synthetic")          # or "covid-semiseg", "ma20-slices", "ma-20", ...
    cases = ds.cases()                      # list[Case], (Z, H, W) arrays in HU or 0..255
    ds.stats()                              # P1/P2 Table 1 numbers
"""

from covidlib.data.api import Dataset, open_dataset
from covidlib.data.errors import DataError
from covidlib.data.manifest import Manifest, data_search_path, list_datasets, load_manifest, locate
from covidlib.data.readers import iter_cases, load_cases, read_nifti, read_slice_image
from covidlib.data.splits import make_split
from covidlib.data.stats import dataset_stats
from covidlib.data.types import Case

__all__ = [
    "Case",
    "DataError",
    "Dataset",
    "Manifest",
    "data_search_path",
    "dataset_stats",
    "iter_cases",
    "list_datasets",
    "load_cases",
    "load_manifest",
    "locate",
    "make_split",
    "open_dataset",
    "read_nifti",
    "read_slice_image",
]
