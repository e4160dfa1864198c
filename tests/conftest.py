import os

import pytest
import torch

# Tests run on CPU, single-threaded (the CI machine has 2 cores; oversubscription distorts).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def expect_one_line_error(tmp_path, monkeypatch, capsys):
    """Run ``hybridsim <argv>`` in-process in an empty folder and check the bad-input contract:
    non-zero exit, exactly one line on stderr containing ``needle``, no traceback, no data, and
    no run directory left behind."""
    from hybridsim.cli import main

    def check(argv: list[str], needle: str) -> None:
        monkeypatch.chdir(tmp_path)
        code = main([*argv, f"hydra.run.dir={tmp_path}/run"] if argv[0] == "train" else argv)
        err = capsys.readouterr().err.strip()
        assert code != 0
        assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
        assert "Traceback" not in err and needle in err, err
        assert not (tmp_path / "data").exists(), "bad input must be rejected before any work"
        assert not (tmp_path / "run").exists(), "a rejected train must leave no run directory"

    return check
