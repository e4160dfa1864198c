"""HDF5 data: reproducible by seed, hashed by config, atomic, clear errors on bad files."""

from dataclasses import replace

import h5py
import numpy as np
import pytest

from hybridsim.config import LVConfig
from hybridsim.data import (
    DataError,
    config_hash,
    data_path,
    ensure_dataset,
    read_split,
    write_dataset,
)
from hybridsim.problems.lotka_volterra import LotkaVolterra

SMALL = LVConfig(t_train=2.0, t_test=4.0)


def test_same_config_and_seed_give_identical_arrays(tmp_path):
    a, _ = ensure_dataset(LotkaVolterra(SMALL), tmp_path / "a")
    b, _ = ensure_dataset(LotkaVolterra(SMALL), tmp_path / "b")
    for split in ("train", "val", "test"):
        sa, sb = read_split(a, split), read_split(b, split)
        for k in sa.arrays:
            np.testing.assert_array_equal(sa.arrays[k], sb.arrays[k])


def test_splits_differ_and_test_extends_beyond_training():
    p = LotkaVolterra(SMALL)
    train, val, test = (p.generate(s, seed) for s, seed in (("train", 1), ("val", 2), ("test", 3)))
    assert not np.array_equal(train.arrays["u"], val.arrays["u"]), "splits must use own seeds"
    assert test.coords["t"][-1] == pytest.approx(4.0) and train.coords["t"][-1] == pytest.approx(2)


def test_hash_follows_data_settings_only():
    base = config_hash(LotkaVolterra(SMALL).data_config())
    assert config_hash(LotkaVolterra(replace(SMALL, noise=0.05)).data_config()) != base
    assert config_hash(LotkaVolterra(replace(SMALL, beta=0.41)).data_config()) != base
    # Model-only settings must not invalidate the data.
    assert config_hash(LotkaVolterra(replace(SMALL, theta3_init=0.9)).data_config()) == base


def test_reuse_and_layout(tmp_path):
    p = LotkaVolterra(SMALL)
    path, generated = ensure_dataset(p, tmp_path)
    assert generated and path == data_path(p, tmp_path)
    mtime = path.stat().st_mtime_ns
    assert ensure_dataset(p, tmp_path) == (path, False)
    assert path.stat().st_mtime_ns == mtime, "a matching file must be reused, not rewritten"
    with h5py.File(path) as f:
        assert f.attrs["problem"] == "lv" and f.attrs["complete"]
        assert "alpha" in f.attrs["config"]
        assert f["train/u"].chunks == (1, *f["train/u"].shape[1:])
        assert "t" in f["train/coords"]
    train = read_split(path, "train")
    assert set(train.arrays) == {"u", "u_true", "u0"} and len(train.arrays["u"]) == 1


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    p = LotkaVolterra(SMALL)
    splits = {s: p.generate(s, 1) for s in ("train", "val", "test")}
    original = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the user presses Ctrl-C half-way
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    target = tmp_path / "lv-x.h5"
    with pytest.raises(KeyboardInterrupt):
        write_dataset(target, p, splits)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [], "no temporary file may be left behind"


def test_corrupt_and_truncated_files_give_clear_errors(tmp_path):
    p = LotkaVolterra(SMALL)
    path, _ = ensure_dataset(p, tmp_path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])  # truncated
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_split(path, "train")
    with pytest.raises(DataError, match="corrupt or truncated"):
        ensure_dataset(p, tmp_path)
    assert path.read_bytes() == good[: len(good) // 3], "the user's file must not be overwritten"
    path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError, match="corrupt"):
        read_split(path, "train")
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "missing.h5", "train")
