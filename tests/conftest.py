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


def run_cli(main, argv, capsys):
    "(exit status, stderr lines) of an in-process run of a console entry point; never a traceback."
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    err = capsys.readouterr().err
    assert 'Traceback' not in err, err
    return code, [l for l in err.splitlines() if l.strip()]


def celeba_test_partition(root, n: int, pixels=lambda i: i):
    "A CelebA-layout folder at `root` of `n` 40 px faces (face i a flat grey `pixels(i)`), every one in CelebA's test partition."
    import numpy as np
    from PIL import Image
    (root / 'img').mkdir(parents=True)
    names = [f'{i:06d}.jpg' for i in range(1, n + 1)]
    for i, name in enumerate(names): Image.fromarray(np.full((40, 40, 3), pixels(i) % 256, np.uint8)).save(root / 'img' / name)
    (root / 'list_eval_partition.txt').write_text(''.join(f'{name} 2\n' for name in names))
    (root / 'list_attr_celeba.txt').write_text(f'{n}\nEyeglasses Smiling\n' + ''.join(f'{name} -1 1\n' for name in names))
    return names
