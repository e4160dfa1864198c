"""HDF5 data sets: schema, atomic writing, provenance, lazy reading (DESIGN.md §6).

Layout of ``<data_dir>/<problem>-<hash>.h5``::

    /                      attrs: schema_version, hybridsim_version, problem, config_hash,
                                  config (YAML of the data-relevant problem config), created,
                                  seeds (JSON), complete (True once fully written)
    /<split>/<array>       one dataset per array, leading axis = sample, chunks of one sample
    /<split>/coords/<name> coordinates shared by the samples (t, angles, grid spacing, …)
    /<split>               attrs: seed, n_samples, plus the problem's own scalars

Files are written to a temporary name and renamed, so an interrupted generation never leaves a
file that looks complete; nothing non-finite is ever written; one process at a time generates a
given file (the others wait for it, then reuse it). On opening, the file must be a regular file
and every array must have the shape and dtype recorded when it was written. See
docs/data-format.md and docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml

from hybridsim import __version__
from hybridsim.atomic import (  # noqa: F401  (re-exported)
    NotARegularFile,
    atomic_path,
    remove_stale_temps,
    require_regular_file,
    write_text_atomic,
)
from hybridsim.interrupts import check as check_interrupt
from hybridsim.locks import lock_data_file

SCHEMA_VERSION = 1
# A problem (hybridsim.problems.base.Problem), duck-typed here: the data layer sits below the
# problems and uses only its name, cfg, data_config() and generate().
Problem = Any


SPLITS = ("train", "val", "test")


class ProblemError(ValueError):
    """A configuration that the problem cannot work with (message is shown to the user)."""


@dataclass
class SplitData:
    """One split of a data set: arrays with a leading sample axis, plus coordinates.

    ``arrays`` hold the samples (e.g. ``u: (n_traj, n_t, 2)``, ``image: (n, ny, nx)``);
    ``coords`` hold what describes the axes (``t``, ``angles``, grid spacing), shared by all
    samples; ``attrs`` hold scalars worth keeping (parameters actually used).
    """

    arrays: dict[str, np.ndarray]
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Arrays and coordinates as tensors on ``device`` (floating ones in ``dtype``)."""
        out: dict[str, torch.Tensor] = {}
        for name, a in {**self.coords, **self.arrays}.items():
            t = torch.as_tensor(np.asarray(a), device=device)
            out[name] = t.to(dtype) if t.is_floating_point() else t
        return out


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


def changed_settings(problem: Problem) -> str:
    """The problem settings that differ from the schema's defaults, as overrides (a hint of which
    setting made the numerics fail)."""
    cfg = problem.cfg
    if not is_dataclass(cfg):
        return ""
    changed = []
    for f in fields(cfg):
        default = f.default if f.default_factory is MISSING else f.default_factory()
        value = getattr(cfg, f.name)
        if default is not MISSING and value != default and f.name != "name":
            changed.append(f"problem.{f.name}={value}")
    return ", ".join(changed)


def _hint(problem: Problem) -> str:
    changed = changed_settings(problem)
    return (
        f"settings changed from the defaults: {changed}"
        if changed
        else "with the default settings (please report it)"
    )


def check_finite(problem: Problem, splits: Mapping[str, SplitData]) -> None:
    """DataError unless every number of every split (arrays, coordinates, attributes) is finite:
    a data file never holds NaN or infinity."""
    for split, data in splits.items():
        items = [(f"{split}/{k}", v) for k, v in data.arrays.items()]
        items += [(f"{split}/coords/{k}", v) for k, v in data.coords.items()]
        items += [(f"{split} attribute {k}", v) for k, v in data.attrs.items()]
        for where, value in items:
            arr = np.asarray(value)
            if arr.dtype.kind not in "fc":
                continue
            flat, block = arr.reshape(-1), 1 << 22  # blocks: no full-size boolean copy
            bad = sum(
                int(np.count_nonzero(~np.isfinite(flat[i : i + block])))
                for i in range(0, flat.size, block)
            )
            if bad:
                raise DataError(
                    f"problem={problem.name} produced non-finite values in {where} ({bad} of "
                    f"{arr.size}); nothing was written. The reference computation overflowed or "
                    f"diverged: {_hint(problem)}"
                )


def _layout(splits: Mapping[str, SplitData]) -> dict[str, dict[str, list]]:
    """``{split: {array: [shape, dtype]}}``, recorded in the file and checked on opening."""
    return {
        split: {
            **{k: [list(np.shape(v)), np.asarray(v).dtype.str] for k, v in data.arrays.items()},
            **{
                f"coords/{k}": [list(np.shape(v)), np.asarray(v).dtype.str]
                for k, v in data.coords.items()
            },
        }
        for split, data in splits.items()
    }


def write_dataset(path: Path, problem: Problem, splits: Mapping[str, SplitData]) -> Path:
    """Write ``splits`` to ``path`` atomically (temporary file in the same folder, then rename);
    DataError, and nothing written, if any value is non-finite."""
    path = Path(path)
    splits = {
        s: SplitData(
            arrays={k: np.ascontiguousarray(v) for k, v in d.arrays.items()},
            coords={k: np.asarray(v) for k, v in d.coords.items()},
            attrs=d.attrs,
        )
        for s, d in splits.items()
    }
    check_finite(problem, splits)
    settings, seeds = problem.data_config(), split_seeds(problem)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["hybridsim_version"] = __version__
        f.attrs["problem"] = problem.name
        f.attrs["config_hash"] = config_hash(settings)
        f.attrs["config"] = yaml.safe_dump(settings, sort_keys=True)
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["seeds"] = json.dumps(seeds)
        f.attrs["layout"] = json.dumps(_layout(splits))
        for split, data in splits.items():
            g = f.create_group(split)
            g.attrs["seed"] = seeds[split]
            for name, value in data.attrs.items():
                g.attrs[name] = value
            n = None
            for name, arr in data.arrays.items():
                n = len(arr)
                chunks = (1, *arr.shape[1:]) if arr.ndim > 1 else None
                g.create_dataset(name, data=arr, chunks=chunks)
            g.attrs["n_samples"] = n or 0
            c = g.create_group("coords")
            for name, arr in data.coords.items():
                c.create_dataset(name, data=arr)
        f.attrs["complete"] = True
    return path


def _open(path: Path) -> h5py.File:
    try:
        require_regular_file(path, "data file")
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except NotARegularFile as e:
        raise DataError(str(e)) from None
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"data file {path} is corrupt or truncated ({e.args[0]})") from None
    try:
        if not f.attrs.get("complete", False):
            raise DataError(f"data file {path} is incomplete (interrupted write?); delete it")
        if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
            raise DataError(
                f"data file {path} has schema {f.attrs.get('schema_version')}, "
                f"expected {SCHEMA_VERSION}; regenerate it"
            )
        _check_layout(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _check_layout(f: h5py.File, path: Path) -> None:
    """Every array has the shape and dtype recorded when the file was written, and its leading
    axis is the split's sample count (files written before the layout was recorded: the sample
    count only). DataError naming the array otherwise."""
    try:
        layout = json.loads(f.attrs["layout"]) if "layout" in f.attrs else None
    except (TypeError, ValueError):
        raise DataError(
            f"data file {path} has an unreadable 'layout' attribute; regenerate it"
        ) from None
    fix = "the file was modified after it was written: delete it (or pass force=true to generate)"
    for split in SPLITS:
        if split not in f or not isinstance(f[split], h5py.Group):
            continue
        g = f[split]
        n = g.attrs.get("n_samples")
        expected = layout.get(split, {}) if isinstance(layout, dict) else None
        for name, ds in [(k, g[k]) for k in g] + [
            (f"coords/{k}", g["coords"][k]) for k in (g["coords"] if "coords" in g else [])
        ]:
            if not isinstance(ds, h5py.Dataset):
                continue
            where = f"{split}/{name}"
            if ds.dtype.kind not in "biufc":
                raise DataError(f"data file {path}: {where} holds {ds.dtype} values, not numbers")
            if expected is not None:
                if name not in expected:
                    raise DataError(f"data file {path}: unexpected array {where}; {fix}")
                shape, dtype = expected[name]
                if list(ds.shape) != list(shape) or np.dtype(dtype) != ds.dtype:
                    raise DataError(
                        f"data file {path}: {where} has shape {tuple(ds.shape)} and dtype "
                        f"{ds.dtype}, expected {tuple(shape)} {np.dtype(dtype)}; {fix}"
                    )
            elif not name.startswith("coords/") and n is not None and ds.shape[:1] != (int(n),):
                raise DataError(
                    f"data file {path}: {where} has shape {tuple(ds.shape)}, expected "
                    f"{int(n)} samples along its first axis; {fix}"
                )
        for name in expected or {}:
            if name not in g:
                raise DataError(f"data file {path}: array {split}/{name} is missing; {fix}")


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
    if _exists(path) and not force:
        return _reuse(path, problem), False
    with lock_data_file(path):  # one generator per file; others wait here, then reuse it
        if _exists(path) and not force:
            return _reuse(path, problem), False
        remove_stale_temps(path.parent, path.name)  # left by a killed generation of this file
        seeds = split_seeds(problem)
        splits = {}
        for s in SPLITS:
            try:
                splits[s] = problem.generate(s, seeds[s])
            except ProblemError:
                raise
            except (ArithmeticError, ValueError, RuntimeError) as e:
                raise DataError(
                    f"generating the {s} split of problem={problem.name} failed "
                    f"({type(e).__name__}: {e}); {_hint(problem)}"
                ) from None
            check_interrupt()
        return write_dataset(path, problem, splits), True


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _reuse(path: Path, problem: Problem) -> Path:
    with _open(path) as f:  # raises DataError with a clear message if corrupt
        if not _matches(f, problem):
            raise DataError(f"data file {path} does not match this config; delete it or force=true")
    return path
