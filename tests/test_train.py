"Training across processes: a run killed mid-way resumes to the same weights; DDP on CPU (gloo, 2 processes)."
import os, sys, json, signal, socket, subprocess, textwrap, time
from dataclasses import replace
from pathlib import Path
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from twostage.losses import LossCfg
from twostage.train import Trainer, TrainCfg, ImageTensorDataset

L1_ONLY = LossCfg(perceptual=0., style=0.)
TCFG = TrainCfg(size=32, batch_size=4, steps_coarse=8, steps_fine=2, ckpt_every=1, val_every=4, sample_every=0,
                n_val=2, mask_family='medium')

SCRIPT = textwrap.dedent('''
    import sys, time, torch
    from twostage.experiments import SMOKE_SIZES
    from twostage.losses import LossCfg
    from twostage.train import Trainer, TrainCfg, ImageTensorDataset
    torch.set_num_threads(1)
    cfg = TrainCfg(size=32, batch_size=4, steps_coarse=8, steps_fine=2, ckpt_every=1, val_every=4, sample_every=0,
                   n_val=2, mask_family='medium')
    g = torch.Generator().manual_seed(0)
    faces = ImageTensorDataset(torch.rand(16, 3, 32, 32, generator=g) * 2 - 1)
    t = Trainer(SMOKE_SIZES, LossCfg(perceptual=0., style=0.), cfg, faces, sys.argv[1], device='cpu', progress=False)
    orig = t.train_step
    def slow(*a, **k):
        time.sleep(0.3); return orig(*a, **k)
    t.train_step = slow
    t.fit()
''')


def _ckpt_step(path):
    try: return torch.load(path, weights_only=True)['step']
    except Exception: return -1


def test_killed_run_resumes_to_identical_weights(tmp_path, tiny_cfg, faces32):
    torch.set_num_threads(1)
    ref = Trainer(tiny_cfg, L1_ONLY, TCFG, faces32, tmp_path / 'ref', device='cpu', progress=False)
    ref.fit()
    run = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, '-c', SCRIPT, str(run)])
    deadline = time.time() + 120
    while _ckpt_step(run / 'last.pt') < 3 and time.time() < deadline and proc.poll() is None: time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()
    k = _ckpt_step(run / 'last.pt')
    assert 3 <= k < TCFG.steps_coarse, f'the run should have been killed mid-way, checkpoint at step {k}'
    resumed = Trainer(tiny_cfg, L1_ONLY, TCFG, faces32, run, device='cpu', progress=False)
    resumed.fit()
    assert resumed.step == ref.step == TCFG.steps_coarse
    for (name, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(ref.discs.state_dict().items(), resumed.discs.state_dict().values()):
        assert torch.equal(a, b), name
    log = pd.read_csv(run / 'losses.csv')
    assert log.step.tolist() == list(range(TCFG.steps_coarse))          # no duplicated or missing rows
    assert not list(run.glob('.*.pt*')), 'a temporary checkpoint file was left behind'


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _ddp_worker(rank, world, port, out, cfg):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        faces = ImageTensorDataset(torch.rand(16, 3, 32, 32, generator=g) * 2 - 1)
        tc = replace(TCFG, steps_coarse=2)
        t = Trainer(cfg, L1_ONLY, tc, faces, Path(out) / f'rank{rank}', device='cpu', progress=False)
        t.fit()
        flat = torch.cat([p.detach().flatten() for p in t.model.parameters()])
        torch.save(flat, Path(out) / f'params{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_processes(tmp_path, tiny_cfg):
    cfg = replace(tiny_cfg, relativistic=False, coarse_norm='instance')  # batch norm statistics are per rank
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), cfg), nprocs=2, join=True)
    p0, p1 = torch.load(tmp_path / 'params0.pt'), torch.load(tmp_path / 'params1.pt')
    assert torch.equal(p0, p1), 'DDP ranks diverged'
    assert (tmp_path / 'rank0' / 'last.pt').exists() and (tmp_path / 'rank0' / 'losses.csv').exists()
    assert not (tmp_path / 'rank1').exists() or not any((tmp_path / 'rank1').iterdir()), 'rank 1 wrote files'
    # the logged losses are the global batch's: equal to a single process training on the whole batch
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    faces = ImageTensorDataset(torch.rand(16, 3, 32, 32, generator=g) * 2 - 1)
    single = Trainer(cfg, L1_ONLY, replace(TCFG, steps_coarse=2), faces, tmp_path / 'single', device='cpu', progress=False)
    single.fit()
    a, b = pd.read_csv(tmp_path / 'rank0' / 'losses.csv'), pd.read_csv(tmp_path / 'single' / 'losses.csv')
    for col in ('g_hole', 'g_valid', 'd_global'):
        assert abs(a[col].iloc[0] - b[col].iloc[0]) < 1e-5 * max(1, abs(b[col].iloc[0])), col
    flat = torch.cat([p.detach().flatten() for p in single.model.parameters()])
    assert torch.allclose(p0, flat, atol=1e-4), 'DDP training differs from single-process training on the same global batch'


def test_favour_glasses_draws_the_faces_with_eyeglasses(tmp_path, tiny_cfg, faces32):
    "`favour_glasses=0.25`: one face of each batch of 4 has eyeglasses; a dataset with none is a clear error, not a plain run."
    import numpy as np
    from twostage.core import UserError
    seen = []
    class Glassy(ImageTensorDataset):
        def __init__(self, images, glasses): super().__init__(images); self.glasses = np.asarray(glasses, bool)
        def __getitem__(self, i): seen.append(i); return super().__getitem__(i)
    tc = replace(TCFG, steps_coarse=3, ckpt_every=10, val_every=10, favour_glasses=0.25)
    with_g = Glassy(faces32.images, [i in (5, 11) for i in range(16)])
    Trainer(tiny_cfg, L1_ONLY, tc, with_g, tmp_path / 'g', val_dataset=faces32, device='cpu', progress=False).fit()
    batches = [seen[i:i + 4] for i in range(0, len(seen), 4)]   # the training batches (validation reads faces32)
    assert [b[-1] in (5, 11) for b in batches] == [True] * 3 and len(seen) == 12, batches
    assert 'favour_glasses' not in TrainCfg().key_dict() and TrainCfg().hash() != replace(TrainCfg(), favour_glasses=0.25).hash()
    with pytest.raises(UserError, match='no training face has eyeglasses'):
        Trainer(tiny_cfg, L1_ONLY, tc, Glassy(faces32.images, [False] * 16), tmp_path / 'n', device='cpu', progress=False).fit()
