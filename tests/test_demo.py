"The demo without a browser: checkpoint discovery, inputs, run/metrics, panel figure, and every widget callback."
import datetime, io, json
import numpy as np
import pytest
import torch
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from PIL import Image

from twostage.train import tiny_checkpoint

from twostage.inpaint import load_inpainter
from twostage.demo import (Demo, find_checkpoints, no_checkpoint_message, pick_face, make_mask, run, fig_panel,
                           save_result, load_photo, fig_demo_panel, measure_latency, MASK_KINDS)

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    r = tmp_path_factory.mktemp('runs')
    s1 = tiny_checkpoint(r / 'smoke' / 'stage1' / 'aaa' / 'last.pt', stage='coarse')
    (s1.parent / 'done.json').write_text(json.dumps({'experiment': 'full', 'stage': 'coarse', 'key': 'aaa', 'steps': 1}))
    s2 = tiny_checkpoint(r / 'smoke' / 'stage2' / 'bbb' / 'last.pt')
    (s2.parent / 'done.json').write_text(json.dumps({'experiment': 'full', 'stage': 'fine', 'key': 'bbb', 'steps': 1}))
    return r

@pytest.fixture(scope='module')
def faces(tmp_path_factory):
    d = tmp_path_factory.mktemp('faces')
    for i in range(40):
        Image.fromarray(np.random.RandomState(i).randint(0, 256, (50, 40, 3), np.uint8)).save(d / f'{i:03d}.png')
    return d

def _upload(b, name='me.png'):
    return ({'name': name, 'type': 'image/png', 'size': len(b), 'content': memoryview(b),
             'last_modified': datetime.datetime.now()},)

def test_find_checkpoints(runs):
    df = find_checkpoints(runs)
    assert df.stage.tolist() == ['fine', 'coarse'] and df.done.all()
    assert df['size'].tolist() == [32, 32] and df.path.iloc[0].endswith('stage2/bbb/last.pt')

def test_no_checkpoint(tmp_path):
    assert len(find_checkpoints(tmp_path)) == 0
    msg = no_checkpoint_message(tmp_path)
    assert 'make reproduce' in msg and 'twostage-train --experiment full --profile cpu' in msg
    demo = Demo(runs=tmp_path, release=False)
    assert demo.model is None and demo.w_run.disabled and 'make reproduce' in demo.status.value
    demo.on_run(); demo.on_save(); demo.on_face(); demo.on_upload()    # none of them fails
    assert 'nothing to save' in demo.messages[0]
    with pytest.raises(FileNotFoundError, match='make reproduce'):
        fig_demo_panel(runs=tmp_path, release=False)

def test_inputs(faces):
    x, info = pick_face('test', index=1, size=32, data=faces)
    assert x.shape == (1, 3, 32, 32) and info['n'] >= 1
    x2, _ = pick_face('test', index=1 + info['n'], size=32, data=faces)   # wraps around
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match='no attribute file'):
        pick_face('test', glasses=True, data=faces)
    for k in MASK_KINDS:
        m = make_mask(k, 32, seed=3)
        assert m.shape == (1, 1, 32, 32) and set(m.unique().tolist()) <= {0., 1.}
    assert make_mask('rectangle', 20, box=(0, 0, 0.5, 0.5)).sum() == 100
    with pytest.raises(ValueError, match='fractions'):
        make_mask('rectangle', 20, box=(0, 0, 5, 5))
    with pytest.raises(ValueError, match='cannot read the uploaded file notes.txt: it is not an image') as e:
        load_photo(b'just some text', 32, name='notes.txt')
    assert 'BytesIO' not in str(e.value)
    buf = io.BytesIO(); Image.new('RGB', (20, 20)).save(buf, format='PNG')
    with pytest.raises(ValueError, match='cut.png') as e: load_photo(buf.getvalue()[:50], 32, name='cut.png')
    assert 'BytesIO' not in str(e.value)
    p, note = load_photo(Image.new('RGB', (640, 480)), 32)
    assert p.shape == (1, 3, 32, 32) and 'centre-cropped 640x480 to 480x480' in note and 'resized to 32x32' in note

def test_run_panel_save(runs, faces, tmp_path):
    model, _ = load_inpainter(find_checkpoints(runs).path.iloc[0])
    image, _ = pick_face('test', size=32, data=faces)
    res = run(model, image, make_mask('eyeband', 32))
    assert {'masked', 'coarse', 'fine', 'out', 'psnr', 'ssim'} <= set(res)
    keep = res['mask'].expand_as(image) == 0
    assert torch.equal(res['out'][keep], image[keep])
    from twostage.metrics import psnr
    assert res['psnr'] == pytest.approx(float(psnr(res['out'], image)[0]))
    fig = fig_panel(res)
    assert [a.get_title() for a in fig.axes] == ['masked input', 'coarse (stage 1)', 'fine (stage 2)', 'original']
    assert 'PSNR' in fig._suptitle.get_text() and 'SSIM' in fig._suptitle.get_text()
    plt.close(fig)
    paths = save_result(res, tmp_path / 'r.png')
    assert Image.open(paths['panel']).size[0] > 300 and Image.open(paths['out']).size == (32, 32)

def test_stage1_checkpoint_shows_coarse(runs, faces):
    model, _ = load_inpainter(find_checkpoints(runs).path.iloc[1])
    res = run(model, pick_face('test', size=32, data=faces)[0], make_mask('box', 32))
    assert res['fine'] is None and res['stage'] == 'coarse' and 'stage 1 only' in res['notes'][0]
    plt.close(fig_panel(res))

def test_demo_callbacks(runs, faces, tmp_path):
    demo = Demo(runs=runs, data=faces, save_dir=tmp_path / 'saved', release=False)
    assert demo.model is not None and demo.size == 32 and demo.image.shape == (1, 3, 32, 32)
    first = demo.image.clone()
    demo.w_index.value = 3; assert not torch.equal(demo.image, first)
    demo.w_kind.value = 'rectangle'
    for w, v in zip(demo.w_box, (0.0, 0.0, 0.5, 0.25)): w.value = v
    res = demo.on_run()
    assert res['hole_ratio'] == pytest.approx(0.125) and res['fine'] is not None
    demo.w_kind.value = 'freeform'; demo.w_seed.value = 7
    assert torch.equal(demo.on_run()['mask'], make_mask('freeform', 32, 7))
    demo.w_stage.value = 'coarse'; assert demo.on_run()['fine'] is None
    saved = demo.on_save(); assert saved['panel'].exists() and saved['out'].exists()
    buf = io.BytesIO(); Image.new('RGB', (300, 100), 'red').save(buf, format='PNG')
    demo.w_upload.value = _upload(buf.getvalue())
    assert 'centre-cropped 300x100' in demo.messages[0]
    assert torch.allclose(demo.on_run()['image'][0, 0], torch.ones(32, 32))   # pure red: R channel = 1
    demo.w_upload.value = _upload(b'garbage', 'bad.png')
    assert 'cannot read the uploaded file bad.png' in demo.messages[0] and 'BytesIO' not in demo.messages[0]
    demo.w_ckpt.value = demo.w_ckpt.options[1][1]                            # switch to the stage-1 checkpoint
    assert demo.model.trained_stage == 'coarse'
    demo.w_stage.value = 'both'; assert demo.on_run()['fine'] is None
    assert demo.widget() is not None

def test_fig_demo_panel(runs, faces, tmp_path):
    fig = fig_demo_panel(runs=runs, data=faces, out_dir=tmp_path, release=False)
    assert (tmp_path / 'demo_panel.png').exists() and 'smoke/full' in fig._suptitle.get_text()

def test_latency_lite_128():
    lat = measure_latency(size=128, threads=2, repeats=2)   # the shipped model with its edge blend, as the demo runs it
    assert lat['median_s'] < 1, lat      # the target, on 2 threads of a 2-core CPU


def test_demo_finds_the_full_model_of_a_real_smoke_run(tmp_path, faces):
    "No hand-written run record: the main job's own done.json must lead the demo and its figure to the full model."
    from twostage.reproduce import reproduce
    from twostage.experiments import train_experiment, get_profile, EXPERIMENTS
    runs = tmp_path / 'runs'
    reproduce('smoke', data=faces, runs=runs, figures=tmp_path / 'figs', experiments=['t6_row1', 't6_row9'], peers=False,
              make_figures=False, progress=False, log=lambda *a: None)
    full_ck = train_experiment(EXPERIMENTS['t6_row9'], get_profile('smoke'), data=faces, runs=runs, progress=False)['fine']
    row1 = train_experiment(EXPERIMENTS['t6_row1'], get_profile('smoke'), data=faces, runs=runs, progress=False)['fine']
    import os, time; os.utime(row1, (time.time() + 60, time.time() + 60))   # the newest run is NOT the full model
    cks = find_checkpoints(runs)
    assert len(cks[cks.stage == 'fine']) == 2
    top = cks.iloc[0]
    assert top.experiment == 'full' and top.stage == 'fine' and top.path == str(full_ck), cks[['experiment', 'experiments', 'path']]
    fig = fig_demo_panel(runs=runs, data=faces, out_dir=tmp_path, release=False)
    assert 'smoke/full' in fig._suptitle.get_text()


def test_demo_offers_the_release_model_first(faces):
    from twostage.demo import release_available
    if not release_available(): pytest.skip('the release weights are not installed (twostage/assets/release128.*)')
    demo = Demo(runs='/nonexistent', data=faces, release=True)
    assert demo.w_ckpt.value == 'release' and demo.model is not None and demo.size == 128
    assert demo.on_run() is not None


def test_demo_faces_are_split_as_the_profiles_split(tmp_path):
    "The demo's test faces are the cpu profile's held-out faces, not CelebA's partition (which holds faces the profiles train on)."
    from twostage.demo import _faces
    from twostage.experiments import get_profile
    from conftest import celeba_test_partition
    d = tmp_path / 'celeba'; names = celeba_test_partition(d, 80)
    demo_test = set(_faces(d).test.path)
    assert demo_test == set(get_profile('cpu').faces(d).test.path) and 0 < len(demo_test) < len(names)
