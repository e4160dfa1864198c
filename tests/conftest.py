import os

import pytest
import torch

# Tests run on CPU, single-threaded (the CI machine has 2 cores; oversubscription distorts).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
