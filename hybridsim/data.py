"""HDF5 data sets: schema, atomic writing, provenance, lazy reading (DESIGN.md §6).

Layout of ``<data_dir>/<problem>-<hash>.h5``::

    /                      attrs: schema_version, hybridsim_version, problem, config_hash,
                                  config (YAML of the data-relevant problem config), created,
                                  seeds (JSON), complete (True once fully written)
    /<split>/<array>       one dataset per array, leading axis = sample, chunks of one sample
    /<split>/coords/<name> coordinates shared by the samples (t, angles, grid spacing, …)
    /<split>               attrs: seed, n_samples, plus the problem's own scalars

Files are written to a temporary name and renamed, so an interrupted generation never leaves a
file that looks complete. See docs/data-format.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml

from hybridsim import __version__
from hybridsim.atomic import atomic_path, write_text_atomic  # noqa: F401  (re-exported)
from hybridsim.problems.base import SPLITS, Problem, SplitData

SCHEMA_VERSION = 1


class DataError(RuntimeError):
    """A data file that cannot be used (missing, corrupt, truncated, wrong schema)."""


def config_hash(data_config: Mapping[str, Any]) -> str:
    """Short, stable hash of the data-relevant config (and the schema version)."""
    blob = json.dumps({"schema": SCHEMA_VERSION, **data_config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def split_seeds(problem: Problem) -> dict[str, int]:
    cfg = problem.cfg
    return {s: int(getattr(cfg, f"seed_{s}")) for s in SPLITS}


def data_path(problem: Problem, data_dir: str | Path) -> Path:
    return Path(data_dir) / f"{problem.name}-{config_hash(problem.data_config())}.h5"


def write_dataset(path: Path, problem: Problem, splits: Mapping[str, SplitData]) -> Path:
    """Write ``splits`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    settings, seeds = problem.data_config(), split_seeds(problem)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["hybridsim_version"] = __version__
        f.attrs["problem"] = problem.name
        f.attrs["config_hash"] = config_hash(settings)
        f.attrs["config"] = yaml.safe_dump(settings, sort_keys=True)
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["seeds"] = json.dumps(seeds)
        for split, data in splits.items():
            g = f.create_group(split)
            g.attrs["seed"] = seeds[split]
            for name, value in data.attrs.items():
                g.attrs[name] = value
            n = None
            for name, arr in data.arrays.items():
                arr = np.ascontiguousarray(arr)
                n = len(arr)
                chunks = (1, *arr.shape[1:]) if arr.ndim > 1 else None
                g.create_dataset(name, data=arr, chunks=chunks)
            g.attrs["n_samples"] = n or 0
            c = g.create_group("coords")
            for name, arr in data.coords.items():
                c.create_dataset(name, data=np.asarray(arr))
        f.attrs["complete"] = True
    return path


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"data file {path} is corrupt or truncated ({e.args[0]})") from None
    if not f.attrs.get("complete", False):
        f.close()
        raise DataError(f"data file {path} is incomplete (interrupted write?); delete it")
    if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
        f.close()
        raise DataError(
            f"data file {path} has schema {f.attrs.get('schema_version')}, "
            f"expected {SCHEMA_VERSION}; regenerate it"
        )
    return f


def read_split(path: str | Path, split: str) -> SplitData:
    """One split, fully read into memory as numpy arrays."""
    path = Path(path)
    try:
        with _open(path) as f:
            if split not in f:
                raise DataError(f"data file {path} has no split {split!r}")
            g = f[split]
            arrays = {k: g[k][()] for k in g if isinstance(g[k], h5py.Dataset)}
            coords = {k: g["coords"][k][()] for k in g["coords"]}
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in g.attrs.items()}
    except (OSError, KeyError) as e:
        raise DataError(f"data file {path} is corrupt or truncated ({e})") from None
    return SplitData(arrays=arrays, coords=coords, attrs=attrs)


def _matches(f: h5py.File, problem: Problem) -> bool:
    return f.attrs.get("config_hash") == config_hash(problem.data_config()) and all(
        s in f for s in SPLITS
    )


def ensure_dataset(
    problem: Problem, data_dir: str | Path, force: bool = False
) -> tuple[Path, bool]:
    """The data file for ``problem``, generated if missing; returns (path, generated_now).

    An existing file whose name matches but whose content is unreadable raises DataError
    (it is the user's file: we do not silently overwrite it) unless ``force``.
    """
    path = data_path(problem, data_dir)
    if path.exists() and not force:
        with _open(path) as f:  # raises DataError with a clear message if corrupt
            if not _matches(f, problem):
                raise DataError(
                    f"data file {path} does not match this config; delete it or force=true"
                )
        return path, False
    seeds = split_seeds(problem)
    splits = {s: problem.generate(s, seeds[s]) for s in SPLITS}
    return write_dataset(path, problem, splits), True


class H5Dataset(torch.utils.data.Dataset):
    """Samples of one split, read lazily: the file is opened in each DataLoader worker on first
    access (h5py handles do not survive pickling)."""

    def __init__(self, path: str | Path, split: str, names: tuple[str, ...] | None = None) -> None:
        self.path, self.split = Path(path), split
        with _open(self.path) as f:
            g = f[split]
            self.names = names or tuple(k for k in g if isinstance(g[k], h5py.Dataset))
            self.length = int(g.attrs["n_samples"])
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._file is None:
            self._file = _open(self.path)
        g = self._file[self.split]
        return {k: torch.from_numpy(np.asarray(g[k][i])) for k in self.names}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}
