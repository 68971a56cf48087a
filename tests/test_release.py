"The shipped release model: present, within the size limit, matching its sha256, loadable without training code, and better than the mean fill on real faces."
import os
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from twostage.release import release_paths, read_release_record, load_release, sha256_file

torch.set_num_threads(1)
FACES = Path(os.environ.get('TWOSTAGE_DATA') or Path(__file__).resolve().parents[1].parent / 'shared' / 'faces' / 'celeba')


def test_shipped_files_match_their_record():
    w, r = release_paths()
    assert w.exists() and r.exists(), f"missing {w} or {r}"
    rec = read_release_record()
    assert rec['sha256'] == sha256_file(w)
    assert w.stat().st_size == rec['bytes'] <= 20 * 1024 * 1024
    assert rec['size'] == 128
    card = rec['card']
    for k in ('data', 'steps', 'train_seconds', 'machine', 'recipe'):
        assert card.get(k), f"model card lacks {k!r}"
    # safetensors: a header of JSON, then raw tensors; nothing that unpickles
    head = w.read_bytes()[:8]
    n = int.from_bytes(head, 'little')
    json.loads(w.read_bytes()[8:8 + n])


def test_shipped_blend_is_the_recorded_one():
    "The record's edge blend (chosen on validation faces) is attached on load, changes hole pixels only, and can be left off."
    rec = read_release_record()
    if not rec.get('blend'): pytest.skip('this release has no edge blend')
    assert 'validation' in rec['blend']['chosen_on']
    model, _ = load_release(device='cpu'); plain, _ = load_release(device='cpu', blend=False)
    assert model.blend.to_dict() == rec['blend']['params'] and plain.blend is None
    torch.manual_seed(0)
    img = torch.rand(2, 3, 128, 128) * 2 - 1; mask = torch.zeros(2, 1, 128, 128); mask[:, :, 40:90, 30:100] = 1
    with torch.no_grad(): a, b = model(img, mask), plain(img, mask)['out']
    assert torch.equal(a['unblended'], b) and torch.equal(a['out'] * (1 - mask), img * (1 - mask))
    assert not torch.equal(a['out'], b) or rec['blend']['params']['near'] == rec['blend']['params']['far'] == 0


def test_inference_imports_no_training_code():
    code = ("import sys; from twostage.release import load_release; m, r = load_release();"
            "import twostage.inpaint;"
            "bad = [k for k in sys.modules if k in ('twostage.train', 'twostage.experiments', 'twostage.reproduce')];"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]


@pytest.mark.skipif(not FACES.exists(), reason=f"no real faces at {FACES}")
def test_inpaints_real_faces_better_than_mean_fill():
    from twostage.data import load_image, square_resize
    from twostage.core import pil_to_tensor, composite
    from twostage.masks import mask_batch
    model, rec = load_release(device='cpu')
    from twostage.data import _unit_hash
    # 128 px crops that the release profile holds out (its test split: hash of the id below test_frac=0.1, seed 0)
    ids = [f'{i:06d}' for i in range(202599, 200000, -1) if (FACES / 'img' / f'{i:06d}.jpg').exists()]
    ids = [i for i, u in zip(ids, _unit_hash(ids, 0)) if u < 0.1][:8]
    img = torch.cat([pil_to_tensor(square_resize(load_image(FACES / 'img' / f'{i}.jpg'), 128))[None] for i in ids])
    assert len(img) >= 5
    mask = mask_batch('medium', len(img), 128, np.random.default_rng(0))
    with torch.no_grad(): out = model(img, mask)['out']
    known = (1 - mask)
    mean = (img * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True)
    mean_fill = composite(mean.expand_as(img), img, mask)
    err = lambda x: float(((x - img).abs() * mask).sum() / (mask.sum() * 3))
    assert err(out) < 0.8 * err(mean_fill), (err(out), err(mean_fill))


def test_inpaint_cli_shipped_model_with_and_without_blend(tmp_path, capsys):
    "twostage-inpaint with no --checkpoint says it uses the shipped model and its blend; --no-blend runs the network alone."
    from PIL import Image
    from twostage.commands import inpaint_main
    rng = np.random.default_rng(0)
    img, mask = tmp_path / 'photo.png', tmp_path / 'mask.png'
    Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(img)
    m = np.zeros((160, 160), np.uint8); m[40:110, 50:120] = 255; Image.fromarray(m).save(mask)
    outs = {}
    for flag in ([], ['--no-blend']):
        out = tmp_path / f'out{len(flag)}.png'
        inpaint_main(['--image', str(img), '--mask', str(mask), '--out', str(out), '--device', 'cpu'] + flag)
        err = capsys.readouterr().err
        assert 'shipped release model' in err
        assert ('edge blend' in err) == (not flag and bool(read_release_record().get('blend'))), err
        outs[len(flag)] = np.asarray(Image.open(out))
        assert (outs[len(flag)][m == 0] == np.asarray(Image.open(img))[m == 0]).all()
    if read_release_record().get('blend'): assert (outs[0] != outs[1]).any()
    with pytest.raises(SystemExit): inpaint_main(['--checkpoint', str(tmp_path / 'x.pt'), '--no-blend', '--image', str(img),
                                                 '--mask', str(mask), '--out', str(tmp_path / 'o.png')])
