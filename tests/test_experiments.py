"Every table row builds and trains; configurations round-trip; tables rebuild from a results file; the README example runs."
import json
from dataclasses import replace
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from twostage.experiments import TABLE6, STAGE1, EXPERIMENTS, get_profile, stage_keys
from twostage.losses import LossCfg
from twostage.models.twostage import ModelCfg, build_model, LITE_CFG, PAPER_CFG
from twostage.train import Trainer, TrainCfg, ImageTensorDataset

SMOKE = get_profile('smoke')


@pytest.fixture(scope='module')
def vgg():
    from twostage.weights import VGGFeatures
    return VGGFeatures()


@pytest.mark.parametrize('exp', TABLE6 + STAGE1, ids=lambda e: e.name)
def test_every_row_trains_two_steps_with_finite_losses(exp, faces32, vgg, tmp_path):
    mcfg, tcfg = SMOKE.model_cfg(exp), SMOKE.train_cfg(exp)
    init = None
    for stage in exp.stages:
        t = Trainer(mcfg, exp.loss, tcfg, faces32, tmp_path / stage, stage=stage, init=init, vgg=vgg, device='cpu', progress=False)
        init = t.fit()
        log = pd.read_csv(tmp_path / stage / 'losses.csv')
        assert len(log) == tcfg.steps(stage)
        num = log.drop(columns=['stage']).select_dtypes('number')
        assert np.isfinite(num.drop(columns=[c for c in num if c.startswith('val_')]).values).all(), exp.name
    if 'fine' in exp.stages:
        assert ('d_fine' in log.columns)


def test_same_seed_same_output():
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        m = build_model(SMOKE.sizes).eval()
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        mask = torch.zeros(1, 1, 32, 32); mask[..., 8:24, 8:24] = 1
        outs.append(m(x, mask)['out'])
    assert torch.equal(outs[0], outs[1])


def test_configs_round_trip_through_json():
    for e in EXPERIMENTS.values():
        assert ModelCfg.from_dict(json.loads(json.dumps(e.model.to_dict()))) == e.model
        assert LossCfg.from_dict(json.loads(json.dumps(e.loss.to_dict()))) == e.loss
    for p in ('smoke', 'cpu', 'gpu'):
        t = get_profile(p).train
        assert TrainCfg.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert PAPER_CFG.hash() != LITE_CFG.hash()


def test_two_configurations_in_one_process():
    a, b = build_model(SMOKE.model_cfg(TABLE6[-1])), build_model(SMOKE.model_cfg(TABLE6[0]))
    assert sum(p.numel() for p in a.parameters()) != sum(p.numel() for p in b.parameters())


def test_table6_rows_share_stage1_and_differ_in_stage2():
    keys = [stage_keys(SMOKE.model_cfg(e), e.loss, SMOKE.train_cfg(e), 'd') for e in TABLE6]
    assert len({k['coarse'] for k in keys}) == 1 and len({k['fine'] for k in keys}) == 9


def test_tables_rebuild_from_results_csv(tmp_path):
    from twostage.tables import write_tables, table6
    rows = []
    for i in range(1, 10):
        for fam in ('medium', 'thick'):
            for m, v in (('psnr', 20 + i), ('ssim', 0.8), ('hole_psnr', 15.), ('hole_l1', .1), ('stlpips_alex', .1)):
                for bucket in ('all', '10-20%'):
                    rows.append(dict(experiment=f't6_row{i}', config_hash='x', code_version='t', seed=0, split='test',
                                     family=fam, bucket=bucket, subset='all', metric=m, value=float(v), n=4, table='table6', row=str(i)))
    p = tmp_path / 'results.csv'; pd.DataFrame(rows).to_csv(p, index=False)
    res = pd.read_csv(p, dtype={'row': str})
    t = table6(res)
    assert t.psnr.tolist() == [20. + i for i in range(1, 10)]
    assert np.allclose(t.d_psnr, t.psnr - t.paper_psnr)
    written = write_tables(res, tmp_path / 'out')
    assert {'table6_csv', 'table6_md', 'table6_tex'} <= set(written)
    assert '28.6217' in Path(written['table6_md']).read_text()   # the paper's row 9 sits beside ours


def test_seed_repeats_share_stage1_and_keep_old_keys(faces32, tmp_path):
    from twostage.experiments import SEEDS, SEED_ROWS
    from twostage.train import stage_seed
    prof = get_profile('smoke')
    assert {e.name.rsplit('_seed', 1)[0] for e in SEEDS} == set(SEED_ROWS) and len(SEEDS) == 2 * len(SEED_ROWS)
    keys = {e.name: stage_keys(prof.model_cfg(e), prof.loss_cfg(e), prof.train_cfg(e), 'data') for e in [EXPERIMENTS['t6_row9']] + SEEDS}
    row9, s1, s2 = keys['t6_row9'], keys['t6_row9_seed1'], keys['t6_row9_seed2']
    assert row9['coarse'] == s1['coarse'] == s2['coarse']                    # one stage 1 for every seed of a row
    assert len({row9['fine'], s1['fine'], s2['fine']}) == 3                  # three different stage-2 runs
    # the default fine_seed (0) leaves a configuration's keys as they were before the field existed
    t = prof.train_cfg(EXPERIMENTS['t6_row9'])
    assert 'fine_seed' not in t.key_dict() and 'fine_seed' in replace(t, fine_seed=1).key_dict()
    assert stage_seed(t, 'fine') == stage_seed(t, 'coarse') == t.seed
    t1 = prof.train_cfg(EXPERIMENTS['t6_row9_seed1'])
    assert stage_seed(t1, 'coarse') == t.seed and stage_seed(t1, 'fine') != t.seed
    # the seed changes what stage 2 starts from (the fine network's initialisation), not the data split
    m = prof.model_cfg(EXPERIMENTS['t6_row9'])
    outs = [Trainer(m, prof.loss_cfg(EXPERIMENTS['t6_row9']), replace(tc, size=32), faces32, tmp_path / str(i), stage='fine',
                    progress=False).model.fine.state_dict() for i, tc in enumerate((t, t, t1))]
    k = next(iter(outs[0]))
    assert torch.equal(outs[0][k], outs[1][k]) and not torch.equal(outs[0][k], outs[2][k])


def test_train_experiment_honours_its_first_stages_and_refuses_others(tmp_path):
    "`twostage-train --experiment X --stages coarse` trains stage 1 only (once, cached); a stage 2 alone is refused."
    from PIL import Image
    faces = tmp_path / 'faces'; faces.mkdir()
    for i in range(24):
        Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 40, 3), np.uint8)).save(faces / f'{i:03d}.png')
    from twostage.experiments import train_experiment
    from twostage.core import UserError
    from twostage.runs import read_record
    full = EXPERIMENTS['full']
    runs = tmp_path / 'runs'
    ck = train_experiment(full, SMOKE, data=faces, runs=runs, progress=False, stages=('coarse',))
    assert list(ck) == ['coarse'] and read_record(ck['coarse'].parent)['experiments'] == ['full', 't6_row9']
    with pytest.raises(UserError, match='only its first stages'):
        train_experiment(full, SMOKE, data=faces, runs=runs, progress=False, stages=('fine',))
    both = train_experiment(full, SMOKE, data=faces, runs=runs, progress=False)
    assert both['coarse'] == ck['coarse'] and read_record(both['fine'].parent)['stage'] == 'fine'


def test_the_protocol_key_names_the_faces(tmp_path):
    "Two face folders give two protocol keys, so a cached score of one is never read for the other (peers, models, bootstrap)."
    from PIL import Image
    from twostage.reproduce import _setup_protocol
    prof, keys = get_profile('smoke'), []
    for k in range(2):
        d = tmp_path / f'faces{k}'; d.mkdir()
        for i in range(60): Image.fromarray(np.full((40, 40, 3), (i * 4 + k) % 256, np.uint8)).save(d / f'{k}_{i:03d}.png')
        keys.append(_setup_protocol(prof, d, tmp_path / 'out', log=lambda *a: None)[-1])
    assert keys[0] != keys[1]
    assert _setup_protocol(prof, tmp_path / 'faces0', tmp_path / 'out', log=lambda *a: None)[-1] == keys[0]   # the same faces: the same key


def test_a_cached_score_without_its_per_face_file_is_scored_again(tmp_path):
    "A results summary is read from its cache only with its per-face scores beside it (the intervals need them)."
    from twostage.reproduce import _cached_eval, _per_image_path
    p, calls = tmp_path / 'r.csv', []
    per = lambda: (calls.append(1), pd.DataFrame({'x': [1.0, 2.0]}))[1]
    make = lambda df: pd.DataFrame({'v': [df.x.sum()]})
    (_, c1), (_, c2) = _cached_eval(p, make, per), _cached_eval(p, make, per)
    assert (c1, c2, len(calls)) == (False, True, 1)
    _per_image_path(p).unlink()
    r3, c3 = _cached_eval(p, make, per)
    assert (c3, len(calls), r3.v.item()) == (False, 2, 3.0) and _per_image_path(p).exists()
