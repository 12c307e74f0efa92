"""One call from a dataset name to its cases: manifest -> folder -> cases -> statistics."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from covidlib.cache import config_hash, tree_digest
from covidlib.data.errors import DataError
from covidlib.data.manifest import Manifest, load_manifest, locate
from covidlib.data.readers import load_cases
from covidlib.data.stats import dataset_stats
from covidlib.data.types import Case


@dataclass
class Dataset:
    """A located dataset: its manifest, folder and (lazily read) labelled cases."""

    manifest: Manifest
    root: Path

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def is_real(self) -> bool:
        """True for expert-labelled data, False for the generated phantom."""
        return self.manifest.access != "generated"

    @property
    def data_kind(self) -> str:
        """``real``, ``phantom`` or ``real 2-D derivative`` (the manifest's ``data_kind``)."""
        return self.manifest.data_kind

    @property
    def labelled_groups(self) -> list[str]:
        """Groups whose masks are ground truth (a noisy teacher's pool is excluded)."""
        return [g.name for g in self.manifest.layout.groups if g.labels == "expert"]

    def cases(self, group: str | list[str] | None = None, progress: bool = False,
              alt_mask: str | None = None) -> list[Case]:
        """The labelled cases (all labelled groups by default), read once and kept.

        ``alt_mask`` reads a group's alternative mask as ``mask`` (e.g. ``"lung"`` of
        ma20-slices, ``"multiclass"`` of covid-semiseg).
        """
        groups = self.labelled_groups if group is None else group
        names = tuple([groups] if isinstance(groups, str) else groups)
        key = (names, alt_mask)
        if key not in self._cases:
            self._cases[key] = load_cases(self.manifest, self.root, list(names),
                                          progress=progress, alt_mask=alt_mask)
        return self._cases[key]

    @cached_property
    def _cases(self) -> dict[tuple, list[Case]]:
        return {}

    def stats(self, connectivity: int = 2) -> dict[str, Any]:
        """P1/P2 Table 1 statistics over the labelled groups.

        ``cases`` (patients) is ``None`` for slice sets whose files carry no patient id
        (COVID-SemiSeg): counting slices as patients would be wrong. Slices grouped into
        volumes (``volumes`` in the manifest, e.g. ma20-slices) count their volumes.
        """
        stats = dataset_stats(self.cases(), self.manifest.infection_labels, connectivity)
        if self.manifest.layout.format == "image-slices" and not any(
                "patient" in c.meta or "slice_ids" in c.meta for c in self.cases()):
            stats["cases"] = None
        return stats

    def generator_info(self) -> dict | None:
        """The phantom's ``phantom.json`` (config, per-case site and spacing), if any."""
        path = self.root / "phantom.json"
        return json.loads(path.read_text()) if path.exists() else None

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data in a result-cache key: its name, whether it is real and,
        for the phantom, a hash of the generator's version and config (a regenerated phantom
        with other settings must not reuse old results)."""
        info = self.generator_info()
        generator = None
        if info is not None:
            generator = config_hash({"version": info.get("generator_version"),
                                     "config": info.get("config")})
        # issue 16: the splits' definitions and the files themselves (an edited split or a
        # replaced file must not return a result computed on the old data)
        splits = config_hash({k: dataclasses.asdict(v) for k, v in self.manifest.splits.items()})
        return {"name": self.name, "real": self.is_real, "generator": generator,
                "splits": splits, "files": self._files_digest}

    @cached_property
    def _files_digest(self) -> str:
        """The files' :func:`~covidlib.cache.tree_digest`, taken once, like the cases."""
        return tree_digest(self.root)


def open_dataset(name: str, data_root: str | Path | None = None, generate: bool = True
                 ) -> Dataset:
    """Locate ``name`` (generating the synthetic phantom on first use when ``generate``)."""
    manifest = load_manifest(name)
    try:
        root = locate(manifest, data_root)
    except DataError:
        if manifest.access != "generated" or not generate:
            raise
        from covidlib.data.manifest import data_search_path
        from covidlib.data.phantom import ensure_synthetic

        root = ensure_synthetic(Path(data_root) if data_root else data_search_path()[0])
    return Dataset(manifest, Path(root))
