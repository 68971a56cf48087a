"The console scripts work end to end on a folder of images: train (config file and named experiment), evaluate, inpaint."
import json, subprocess, sys
from dataclasses import replace
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from twostage.experiments import SMOKE_SIZES, get_profile


@pytest.fixture(scope='module')
def faces_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('faces')
    rng = np.random.default_rng(0)
    for i in range(24):   # any folder of images: no attribute file, mixed sizes
        s = 40 + (i % 3) * 8
        Image.fromarray(rng.integers(0, 256, (s, s + 4, 3), dtype=np.uint8)).save(d / f'face{i:03d}.png')
    return d


def test_train_from_config_file(faces_dir, tmp_path):
    from twostage.train import main
    spec = {'model': SMOKE_SIZES.to_dict(), 'loss': {'perceptual': 0., 'style': 0.},
            'train': {'size': 32, 'batch_size': 2, 'steps_coarse': 2, 'steps_fine': 2, 'ckpt_every': 2, 'val_every': 2,
                      'sample_every': 0, 'n_val': 2}}
    cfg = tmp_path / 'run.json'; cfg.write_text(json.dumps(spec))
    main(['--config', str(cfg), '--data', str(faces_dir), '--out', str(tmp_path / 'out'), '--device', 'cpu'])
    runs = list((tmp_path / 'out').glob('config-*/fine/last.pt'))
    assert len(runs) == 1
    assert len(pd.read_csv(runs[0].parent / 'losses.csv')) == 2


def test_train_named_experiment_then_eval_then_inpaint(faces_dir, tmp_path, capsys):
    from twostage.train import main as train_main
    from twostage.evaluate import main as eval_main
    from twostage.inpaint import main as inpaint_main
    train_main(['--experiment', 'full', '--profile', 'smoke', '--data', str(faces_dir), '--out', str(tmp_path / 'runs'),
                '--device', 'cpu'])
    ck = next((tmp_path / 'runs' / 'smoke' / 'stage2').glob('*/last.pt'))
    out_csv = tmp_path / 'res.csv'
    eval_main(['--checkpoint', str(ck), '--profile', 'smoke', '--data', str(faces_dir), '--out', str(out_csv),
               '--masks', str(tmp_path / 'masks'), '--device', 'cpu'])
    res = pd.read_csv(out_csv)
    assert {'psnr', 'ssim', 'hole_psnr', 'hole_l1'} <= set(res.metric)
    assert (res.n > 0).all() and np.isfinite(res[res.metric == 'ssim'].value).all()
    assert 'wrote' in capsys.readouterr().out
    img, mask = tmp_path / 'photo.png', tmp_path / 'mask.png'
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(img)
    m = np.zeros((50, 70), np.uint8); m[10:30, 20:40] = 255; Image.fromarray(m).save(mask)
    inpaint_main(['--checkpoint', str(ck), '--image', str(img), '--mask', str(mask), '--out', str(tmp_path / 'out.png'),
                  '--device', 'cpu'])
    out = np.asarray(Image.open(tmp_path / 'out.png'))
    assert out.shape == (50, 70, 3)
    src = np.asarray(Image.open(img))
    assert (out[m == 0] == src[m == 0]).all()     # known pixels untouched at the original size


def test_console_scripts_are_installed():
    for name in ('twostage-train', 'twostage-eval', 'twostage-inpaint', 'twostage-reproduce'):
        exe = Path(sys.executable).parent / name
        assert exe.exists(), f'{name} is not installed next to {sys.executable}'
        r = subprocess.run([str(exe), '--help'], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and 'usage' in r.stdout.lower(), r.stderr[-500:]


def test_torchrun_two_processes_train_from_config(faces_dir, tmp_path):
    "The real multi-process launch path: torchrun starts 2 CPU processes (gloo); only rank 0 writes the run."
    torchrun = Path(sys.executable).parent / 'torchrun'
    if not torchrun.exists(): pytest.skip('torchrun is not installed next to this python')
    spec = {'model': replace(SMOKE_SIZES, coarse_norm='instance').to_dict(), 'loss': {'perceptual': 0., 'style': 0.},
            'train': {'size': 32, 'batch_size': 4, 'steps_coarse': 2, 'steps_fine': 2, 'ckpt_every': 2, 'val_every': 2,
                      'sample_every': 0, 'n_val': 2}}
    cfg = tmp_path / 'run.json'; cfg.write_text(json.dumps(spec))
    r = subprocess.run([str(torchrun), '--standalone', '--nproc_per_node', '2', '-m', 'twostage.train', '--config', str(cfg),
                        '--data', str(faces_dir), '--out', str(tmp_path / 'out'), '--device', 'cpu'],
                       capture_output=True, text=True, timeout=300, env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    runs = list((tmp_path / 'out').glob('config-*'))
    assert len(runs) == 1
    log = pd.read_csv(runs[0] / 'fine' / 'losses.csv')
    assert log.step.tolist() == [0, 1]                      # written once (rank 0), not once per process
    assert r.stdout.count('"coarse"') == 1                  # only rank 0 prints the result


def test_bench_recipe_command(faces_dir, tmp_path, capsys):
    from twostage.bench import main
    out = tmp_path / 'recipe.csv'
    main(['recipe', '--profile', 'smoke', '--steps', '1', '--n-faces', '2', '--families', 'medium', '--variants', 'profile',
          'l1_no_gan', '--data', str(faces_dir), '--runs', str(tmp_path / 'runs'), '--device', 'cpu', '--csv', str(out)])
    df = pd.read_csv(out)
    assert df.variant.tolist() == ['biharmonic', 'profile', 'l1_no_gan'] and df.psnr.notna().all()
    assert 'l1_no_gan' in capsys.readouterr().out
    with pytest.raises(SystemExit): main(['recipe', '--variants', 'warp_speed'])
