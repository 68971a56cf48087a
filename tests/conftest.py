"Shared fixtures: a tiny model configuration and random faces, so cross-module tests run in seconds on a CPU."
import os
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# precision='auto' remembers what it measured per machine (twostage.runtime.precision_memo_path): tests measure
# afresh in a folder of their own instead of reading or writing the user's ~/.cache/twostage
import tempfile
os.environ['TWOSTAGE_CACHE'] = tempfile.mkdtemp(prefix='twostage-test-cache-')


@pytest.fixture(scope='session')
def tiny_cfg():
    from twostage.experiments import SMOKE_SIZES
    return SMOKE_SIZES


@pytest.fixture(scope='session')
def faces32():
    from twostage.train import ImageTensorDataset
    g = torch.Generator().manual_seed(0)
    return ImageTensorDataset(torch.rand(16, 3, 32, 32, generator=g) * 2 - 1)
