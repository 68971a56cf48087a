"Inference on arbitrary photos: round trip at the original resolution, bad masks, folder mode, the command line."
import json
import numpy as np
import pytest
import torch
from PIL import Image

from twostage.train import tiny_checkpoint

from twostage.inpaint import (load_inpainter, inpaint_image, inpaint_folder, prepare, prepare_mask)
from twostage.commands import inpaint_main as main
from twostage.models.twostage import TINY_CFG

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def ck(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp('ck') / 'tiny.pt', size=32)

@pytest.fixture(scope='module')
def model(ck):
    return load_inpainter(ck, device='cpu')[0]

def _photo(w=333, h=201, seed=0):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))

def _hole(w=333, h=201):
    m = np.zeros((h, w), np.uint8); m[60:120, 140:200] = 255; return m

def test_checkpoint_is_the_training_format(ck):
    d = torch.load(ck, map_location='cpu', weights_only=True)
    assert {'model', 'model_cfg', 'train_cfg', 'stage', 'step'} <= set(d)
    assert d['train_cfg']['size'] == 32 and d['stage'] == 'fine' and d['step'] == 1

def test_round_trip_non_square_large(model):
    photo, hole = _photo(), _hole()
    res, info = inpaint_image(model, photo, Image.fromarray(hole))
    a, b, mh = np.asarray(res), np.asarray(photo), hole > 0
    assert res.size == photo.size and res.mode == 'RGB'
    assert np.array_equal(a[~mh], b[~mh])           # every known pixel byte-exact
    assert (a[mh] != b[mh]).mean() > 0.5            # the hole was replaced
    assert info['box'] == (66, 0, 267, 201) and info['size'] == 32 and info['ran']
    # the model's input of that photo: the centre square at the model's size, in [-1, 1]
    x, _ = prepare(photo, 32); assert x.shape == (1, 3, 32, 32) and x.min() >= -1 and x.max() <= 1

def test_tall_photo_and_stage_coarse(model):
    photo, hole = _photo(90, 170, 1), _hole(90, 170)[:, :90]
    res, info = inpaint_image(model, photo, hole > 0, stage='coarse')
    mh = hole > 0
    assert info['stage'] == 'coarse' and info['box'] == (0, 40, 90, 130)
    assert np.array_equal(np.asarray(res)[~mh], np.asarray(photo)[~mh])

def test_mask_size_mismatch_warns(model):
    photo, hole = _photo(), _hole()
    small = Image.fromarray(hole).resize((111, 67), Image.Resampling.NEAREST)
    res, info = inpaint_image(model, photo, small)
    assert any('nearest neighbour' in w for w in info['warnings'])
    m = np.asarray(small.resize(photo.size, Image.Resampling.NEAREST)) > 0
    assert np.array_equal(np.asarray(res)[~m], np.asarray(photo)[~m])
    _, w = prepare_mask(np.ones((10, 10)) * np.eye(10), photo.size, 32, invert=False)
    assert any('different aspect ratio' in x for x in w)

def test_polarity_detection(model):
    photo, hole = _photo(), _hole()
    inv = Image.fromarray(255 - hole)
    with pytest.raises(ValueError, match='looks inverted'):
        inpaint_image(model, photo, inv)
    r_auto, i_auto = inpaint_image(model, photo, inv, invert='auto')
    r_ok, _ = inpaint_image(model, photo, Image.fromarray(hole))
    assert np.array_equal(np.asarray(r_auto), np.asarray(r_ok))
    assert any('inverted it' in w for w in i_auto['warnings'])

def test_rgb_and_rgba_masks(model):
    photo, hole = _photo(), _hole()
    t, _ = prepare_mask(Image.fromarray(hole), photo.size, 32)
    assert torch.equal(prepare_mask(Image.fromarray(hole).convert('RGB'), photo.size, 32)[0], t)
    rgba = np.full(hole.shape + (4,), 255, np.uint8); rgba[..., 3] = 255 - hole   # erased = hole
    t2, w = prepare_mask(Image.fromarray(rgba, 'RGBA'), photo.size, 32)
    assert torch.equal(t2, t) and 'alpha' in w[0]

def test_empty_mask_returns_input(model):
    photo = _photo()
    res, info = inpaint_image(model, photo, np.zeros((201, 333), np.uint8))
    assert np.array_equal(np.asarray(res), np.asarray(photo)) and not info['ran']
    assert 'no hole' in info['warnings'][0]

def test_full_mask_runs_with_warning(model):
    res, info = inpaint_image(model, _photo(), np.full((201, 333), 255, np.uint8))
    assert info['ran'] and any('guess from nothing' in w for w in info['warnings'])

def test_stage1_checkpoint_runs_coarse(tmp_path):
    m1, _ = load_inpainter(tiny_checkpoint(tmp_path / 's1.pt', stage='coarse'))
    _, info = inpaint_image(m1, _photo(), _hole())
    assert info['stage'] == 'coarse' and 'stage 1 only' in info['warnings'][0]

def test_folder_with_unreadable_file(model, tmp_path):
    imgs, masks = tmp_path / 'img', tmp_path / 'mask'; imgs.mkdir(); masks.mkdir()
    for i in range(2):
        _photo(80, 60, i).save(imgs / f'a{i}.jpg'); Image.fromarray(_hole(80, 60)).save(masks / f'a{i}.png')
    (imgs / 'bad.jpg').write_bytes(b'\xff\xd8 truncated')
    Image.fromarray(_hole(80, 60)).save(masks / 'bad.png')
    _photo(80, 60).save(imgs / 'lonely.png')
    (masks / 'inv.png').write_bytes(b'')  # unused and unreadable mask: reported as unused, harmless
    rep = inpaint_folder(model, imgs, masks, tmp_path / 'out')
    assert rep['count'] == {'images': 4, 'done': 2, 'skipped': 2}
    reasons = {r['image'].split('/')[-1]: r['reason'] for r in rep['skipped']}
    assert 'UnreadableImage' in reasons['bad.jpg'] and 'no mask' in reasons['lonely.png']
    assert sorted(p.name for p in (tmp_path / 'out').glob('*.png')) == ['a0.png', 'a1.png']
    assert json.loads((tmp_path / 'out' / 'report.json').read_text())['count']['done'] == 2
    rep2 = inpaint_folder(model, imgs, masks, tmp_path / 'out2', pair='order')
    assert rep2['count']['images'] == 4

def test_cli_main(ck, tmp_path):
    _photo().save(tmp_path / 'p.jpg'); Image.fromarray(_hole()).save(tmp_path / 'm.png')
    assert main(['--checkpoint', str(ck), '--image', str(tmp_path / 'p.jpg'), '--mask', str(tmp_path / 'm.png'),
                 '--out', str(tmp_path / 'o' / 'r.png'), '--stage', 'coarse', '--device', 'cpu']) == 0
    assert Image.open(tmp_path / 'o' / 'r.png').size == (333, 201)
    assert main(['--checkpoint', str(ck), '--images', str(tmp_path), '--masks', str(tmp_path), '--out', str(tmp_path / 'f')]) == 0

def test_mismatched_checkpoint(ck, tmp_path, capsys):
    other = tiny_checkpoint(tmp_path / 'other.pt', fem=False)
    with pytest.raises(ValueError, match='fem'):
        load_inpainter(other, model_cfg=TINY_CFG)
    _photo().save(tmp_path / 'p.jpg'); Image.fromarray(_hole()).save(tmp_path / 'm.png')
    with pytest.raises(SystemExit) as e:
        main(['--checkpoint', str(other), '--image', str(tmp_path / 'p.jpg'), '--mask', str(tmp_path / 'm.png'),
              '--out', str(tmp_path / 'r.png'), '--experiment', 'full', '--profile', 'smoke'])
    assert e.value.code == 2 and 'another model configuration' in capsys.readouterr().err
    (tmp_path / 'junk.pt').write_bytes(b'junk')
    with pytest.raises(ValueError, match='not a PyTorch file at all'):
        load_inpainter(tmp_path / 'junk.pt')
