"Runs are never silently reused or mixed: data in the run identity, one trainer per folder, resume past a damaged last.pt, the precision recorded."
import json, subprocess, sys, os
from unittest import mock
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twostage.experiments import main as train_main, get_profile, stage_keys, data_id, keep_min_side, EXPERIMENTS, PROFILES
from twostage.models.twostage import TINY_CFG
from twostage.train import TrainCfg

torch.set_num_threads(1)


def _faces(d: Path, n: int, seed: int, size: int = 32) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(n):
        Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f'{seed}_{i:03d}.png')
    return d


def _config(p: Path) -> Path:
    p.write_text(json.dumps({'model': TINY_CFG.to_dict(), 'loss': {'perceptual': 0., 'style': 0.},
                             'train': {'size': 32, 'batch_size': 2, 'steps_coarse': 2, 'steps_fine': 2, 'ckpt_every': 1,
                                       'val_every': 2, 'sample_every': 0, 'n_val': 2, 'precision': 'fp32'}}))
    return p


def _run(argv, capsys):
    try: code = train_main(argv)
    except SystemExit as e: code = e.code
    out = capsys.readouterr()
    return code or 0, out.out, out.err


def test_config_run_is_keyed_by_its_data(tmp_path, capsys):
    cfg = _config(tmp_path / 'tiny.json')
    a, b = _faces(tmp_path / 'a', 24, 0), _faces(tmp_path / 'b', 24, 1)
    code, out_a, _ = _run(['--config', str(cfg), '--data', str(a), '--out', str(tmp_path / 'R')], capsys)
    assert code == 0
    code, out_b, _ = _run(['--config', str(cfg), '--data', str(b), '--out', str(tmp_path / 'R')], capsys)
    assert code == 0
    ca, cb = json.loads(out_a)['fine'], json.loads(out_b)['fine']
    assert Path(ca).parents[1] != Path(cb).parents[1], (ca, cb)   # two runs, not the first one returned again
    rec = json.loads((Path(cb).parent / 'train_cfg.json').read_text())
    assert rec['data']['root'] == str(b.resolve()) and rec['data']['n_files'] == 24
    ck = torch.load(cb, map_location='cpu', weights_only=True)
    assert ck['data']['names_sha256'] == rec['data']['names_sha256']
    assert ck['precision_choice']['precision'] == 'fp32' and ck['train_cfg']['precision'] == 'fp32'


def test_config_with_unknown_key_is_refused(tmp_path, capsys):
    cfg = tmp_path / 'typo.json'
    cfg.write_text(json.dumps({'model': TINY_CFG.to_dict(), 'train': {'sizee': 3}}))
    code, _, err = _run(['--config', str(cfg), '--data', str(_faces(tmp_path / 'a', 4, 0)), '--out', str(tmp_path / 'R')], capsys)
    assert code == 2 and 'sizee' in err and "valid:" in err and 'Traceback' not in err


def test_second_trainer_in_a_folder_is_refused(tmp_path):
    from twostage.runtime import run_lock
    cfg, faces = _config(tmp_path / 'tiny.json'), _faces(tmp_path / 'a', 8, 0)
    out = tmp_path / 'R'
    r = subprocess.run([sys.executable, '-m', 'twostage.experiments', '--config', str(cfg), '--data', str(faces), '--out', str(out)],
                       capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-800:]
    run = next(out.glob('config-*')) / 'coarse'
    with run_lock(run):   # as a first trainer still running in it would
        r = subprocess.run([sys.executable, '-m', 'twostage.experiments', '--config', str(cfg), '--data', str(faces), '--out', str(out)],
                           capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 2, (r.returncode, r.stderr[-800:])
    assert 'in use by another training process' in r.stderr and f'"pid": {os.getpid()}' in r.stderr and 'Traceback' not in r.stderr


def test_damaged_last_pt_without_fallback_names_the_file(tmp_path, capsys):
    cfg, faces = _config(tmp_path / 'tiny.json'), _faces(tmp_path / 'a', 8, 0)
    code, out, _ = _run(['--config', str(cfg), '--data', str(faces), '--out', str(tmp_path / 'R'), '--stages', 'coarse'], capsys)
    run = Path(json.loads(out)['coarse']).parent
    for f in run.glob('*.pt'): f.write_bytes(f.read_bytes()[:100])
    code, _, err = _run(['--config', str(cfg), '--data', str(faces), '--out', str(tmp_path / 'R'), '--stages', 'coarse'], capsys)
    assert code == 2 and 'last.pt' in err and '--no-resume' in err and 'Traceback' not in err, err


def test_precision_is_part_of_the_key():
    p = get_profile('smoke')
    m, l = p.model_cfg(EXPERIMENTS['t6_row9']), p.loss_cfg(EXPERIMENTS['t6_row9'])
    k32 = stage_keys(m, l, replace(p.train, precision='fp32'), 'x')
    k16 = stage_keys(m, l, replace(p.train, precision='bf16'), 'x')
    assert k32['coarse'] != k16['coarse'] and k32['fine'] != k16['fine']


def test_release_profile_trains_on_real_128px_faces_only(tmp_path):
    _faces(tmp_path / 'f', 6, 0, size=96); _faces(tmp_path / 'f', 5, 1, size=128)
    rel = get_profile('release')
    assert rel.train.size == 128 and rel.min_side == 128 and rel.model_cfg(EXPERIMENTS['t6_row9']).fem
    from twostage.data import load_faces
    f = keep_min_side(load_faces(tmp_path / 'f', size=128, follow_partition=False), 128)
    assert len(f.df) == 5 and all(i.startswith('1_') for i in f.df['id'])
    assert data_id(f, rel) != data_id(load_faces(tmp_path / 'f', size=128, follow_partition=False), rel)


@pytest.mark.parametrize('cls_path', ['twostage.models.twostage.ModelCfg', 'twostage.losses.LossCfg', 'twostage.train.TrainCfg'])
def test_every_config_loader_is_strict(cls_path):
    import importlib
    mod, name = cls_path.rsplit('.', 1)
    cls = getattr(importlib.import_module(mod), name)
    with pytest.raises(ValueError, match=r"unknown .*'typo_field'.*valid:"):
        cls.from_dict({'typo_field': 1})
    assert cls.from_dict(cls().to_dict()) == cls()


@pytest.mark.parametrize('argv, says', [
    (['--experiment', 'full', '--profile', 'fast'], f"unknown profile 'fast'; valid: {', '.join(PROFILES)}"),
    (['--experiment', 'ful', '--profile', 'smoke'], "unknown experiment 'ful'; valid: t6_row1, "),
    (['--experiment', 'full', '--profile', 'smoke', '--data', 'NOFACES'], 'no face images found at '),
    (['--experiment', 'full', '--profile', 'smoke', '--device', 'cuda'],
     '--device cuda: this machine has no CUDA GPU (torch.cuda.is_available() is False); use --device cpu'),
])
def test_train_user_mistakes(tmp_path, capsys, argv, says):
    "The twostage-train rows of the bad-input table in nbs/14_inpaint.ipynb: one line (and the --debug hint), exit status 2."
    argv = [str(tmp_path / a) if a == 'NOFACES' else a for a in argv]
    with mock.patch('torch.cuda.is_available', lambda: False):
        code, _, err = _run([*argv, '--out', str(tmp_path / 'R')], capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and 'Traceback' not in err, err
    assert lines[0].startswith('twostage-train: error: ') and says in lines[0], lines
    assert not list((tmp_path / 'R').rglob('*.pt'))   # nothing trained


def test_perceptual_trunk_is_part_of_the_key(tmp_path, monkeypatch):
    "ImageNet VGG16 weights appearing in the torch hub cache make other runs: none resumes or reuses one trained on the ST-LPIPS trunk."
    from twostage.experiments import plan_experiment, perceptual_trunk
    from twostage.losses import LossCfg
    p = get_profile('smoke')
    faces = p.faces(_faces(tmp_path / 'f', 12, 0))
    exp = EXPERIMENTS['t6_row9']
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))   # an empty hub cache: the ST-LPIPS trunk
    monkeypatch.delenv('TWOSTAGE_WEIGHTS', raising=False)
    assert perceptual_trunk(p.loss_cfg(exp)) == 'stlpips'
    before = plan_experiment(exp, p, faces, runs=tmp_path / 'R', log=None)
    (tmp_path / 'torch' / 'hub' / 'checkpoints').mkdir(parents=True)
    (tmp_path / 'torch' / 'hub' / 'checkpoints' / 'vgg16-397923af.pth').touch()   # located, never loaded, by the key
    assert perceptual_trunk(p.loss_cfg(exp)) == 'imagenet'
    after = plan_experiment(exp, p, faces, runs=tmp_path / 'R', log=None)
    assert all(before[st][2] != after[st][2] and before[st][0] != after[st][0] for st in exp.stages)
    assert perceptual_trunk(LossCfg(perceptual=0., style=0.)) is None   # no VGG terms: no trunk, no entry


def test_resume_across_perceptual_trunks_is_refused(faces32, tmp_path):
    "A run folder trained against one kind of VGG16 weights is never resumed with the other; nothing in it is touched."
    import copy
    from twostage.core import UserError
    from twostage.losses import LossCfg
    from twostage.train import Trainer
    from twostage.weights import VGGFeatures
    st = VGGFeatures(layers=('pool1',))                     # the ST-LPIPS trunk here (no ImageNet weights on the build machines)
    im = copy.copy(st); im.source = 'torch-hub-cache:/somewhere/vgg16-397923af.pth'   # the same layers, named as ImageNet's
    loss = LossCfg(vgg_layers=('pool1',))
    tc = TrainCfg(size=32, batch_size=2, steps_coarse=2, ckpt_every=1, val_every=2, sample_every=0, n_val=2, precision='fp32')
    Trainer(TINY_CFG, loss, tc, faces32, tmp_path / 'run', stage='coarse', vgg=st, progress=False).fit()
    files = lambda: {p.name: p.read_bytes() for p in (tmp_path / 'run').iterdir() if p.is_file() and p.name != '.lock'}   # the lock: who holds it, since when
    before = files()
    longer = replace(tc, steps_coarse=4)
    with pytest.raises(UserError, match='resuming would mix'):
        Trainer(TINY_CFG, loss, longer, faces32, tmp_path / 'run', stage='coarse', vgg=im, progress=False).fit()
    assert files() == before
    Trainer(TINY_CFG, loss, longer, faces32, tmp_path / 'run', stage='coarse', vgg=st, progress=False).fit()   # the same trunk resumes
    assert torch.load(tmp_path / 'run' / 'last.pt', map_location='cpu', weights_only=True)['step'] == 4
