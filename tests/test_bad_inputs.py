"Bad inputs to twostage-inpaint and twostage-eval: one or two lines, exit status 2, no traceback, and no file touched."
import os, subprocess, sys
from pathlib import Path
from unittest import mock
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from twostage.train import tiny_checkpoint

from twostage.inpaint import read_mask
from twostage.commands import inpaint_main, eval_main
from twostage.evaluate import RESULT_COLUMNS
from twostage.experiments import PROFILES

torch.set_num_threads(1)
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}


@pytest.fixture(scope='module')
def ws(tmp_path_factory):
    "A workspace: a tiny two-stage and a stage-1 checkpoint, a photo, its mask, and a folder of faces."
    d = tmp_path_factory.mktemp('bad')
    rng = np.random.default_rng(0)
    tiny_checkpoint(d / 'ck.pt'); tiny_checkpoint(d / 'stage1.pt', stage='coarse')
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(d / 'photo.jpg')
    Image.fromarray(_hole()).save(d / 'mask.png')
    (d / 'faces').mkdir()
    for i in range(24): Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(d / 'faces' / f'f{i:03d}.png')
    return d


def _hole():
    m = np.zeros((60, 80), np.uint8); m[20:40, 30:50] = 255; return m


def _run(main, argv, capsys):
    "(exit status, stderr lines) of an in-process run of a console entry point; never a traceback."
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    err = capsys.readouterr().err
    assert 'Traceback' not in err, err
    return code, [l for l in err.splitlines() if l.strip()]


def _one(ws, out, *extra):
    return ['--checkpoint', ws / 'ck.pt', '--image', ws / 'photo.jpg', '--mask', ws / 'mask.png', '--out', out, '--device', 'cpu', *extra]


def _snapshot(*folders):
    return {p: p.read_bytes() for f in folders for p in sorted(Path(f).rglob('*')) if p.is_file()}


# ---------------------------------------------------------------- twostage-inpaint, one photo

@pytest.mark.parametrize('out, extra, says', [
    ('photo.jpg', ['--overwrite'], 'is the --image file: refusing to overwrite an input'),   # even with --overwrite
    ('mask.png', ['--overwrite'], 'is the --mask file: refusing to overwrite an input'),
    ('link.jpg', ['--overwrite'], 'is the --image file'),                                    # a hard link: same inode
    ('folder', [], 'is a folder; give a file name'),
    ('existing.png', [], 'already exists; pass --overwrite'),
    ('result.gif', [], "unknown image extension '.gif'"),
    ('result', [], 'no file extension'),
])
def test_inpaint_refuses_to_overwrite(ws, capsys, tmp_path, out, extra, says):
    if not (ws / 'link.jpg').exists(): os.link(ws / 'photo.jpg', ws / 'link.jpg')
    (ws / 'folder').mkdir(exist_ok=True)
    if not (ws / 'existing.png').exists(): (ws / 'existing.png').write_bytes(b'an earlier result')
    before = _snapshot(ws)
    code, err = _run(inpaint_main, _one(ws, ws / out, *extra), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith('twostage-inpaint: error: ') and says in err[0], err
    assert _snapshot(ws) == before                 # no file written, none changed
    assert not list((ws / 'folder').iterdir())


def test_inpaint_overwrite_replaces_a_result_only(ws, capsys, tmp_path):
    out = tmp_path / 'r.png'; out.write_bytes(b'old')
    assert _run(inpaint_main, _one(ws, out, '--overwrite'), capsys)[0] == 0
    assert Image.open(out).format == 'PNG' and Image.open(out).size == (80, 60)


@pytest.mark.parametrize('ext, fmt', [('.png', 'PNG'), ('.jpg', 'JPEG'), ('.jpeg', 'JPEG'), ('.webp', 'WEBP'),
                                      ('.bmp', 'BMP'), ('.tif', 'TIFF'), ('.TIFF', 'TIFF')])
def test_inpaint_format_follows_the_extension(ws, capsys, tmp_path, ext, fmt):
    out = tmp_path / f'r{ext}'
    assert _run(inpaint_main, _one(ws, out), capsys)[0] == 0
    with Image.open(out) as im: assert im.format == fmt and im.size == (80, 60)


def test_inpaint_device_cuda_without_cuda(ws, capsys, tmp_path):
    with mock.patch('torch.cuda.is_available', lambda: False):
        code, err = _run(inpaint_main, _one(ws, tmp_path / 'r.png')[:-2] + ['--device', 'cuda'], capsys)
    assert code == 2 and err == ['twostage-inpaint: error: --device cuda: this machine has no CUDA GPU '
                                 '(torch.cuda.is_available() is False); use --device cpu']
    assert not (tmp_path / 'r.png').exists()


def test_inpaint_missing_and_corrupt_inputs(ws, capsys, tmp_path):
    (tmp_path / 'junk.pt').write_bytes(b'junk'); (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    base = ['--image', ws / 'photo.jpg', '--mask', ws / 'mask.png', '--out', tmp_path / 'r.png']
    for argv, says in [(['--checkpoint', tmp_path / 'none.pt'] + base, 'checkpoint not found'),
                       (['--checkpoint', tmp_path / 'junk.pt'] + base, 'is not a twostage checkpoint'),
                       (['--checkpoint', ws / 'ck.pt', '--image', tmp_path / 'nope.jpg', '--mask', ws / 'mask.png',
                         '--out', tmp_path / 'r.png'], '--image'),
                       (['--checkpoint', ws / 'ck.pt', '--image', tmp_path / 'broken.jpg', '--mask', ws / 'mask.png',
                         '--out', tmp_path / 'r.png'], 'cannot read image')]:
        code, err = _run(inpaint_main, argv, capsys)
        assert code == 2 and len(err) == 2 and says in err[0] and 'with --debug' in err[1], err
    assert not (tmp_path / 'r.png').exists()


# ---------------------------------------------------------------- masks

def _filled(ws, capsys, tmp_path, mask_path):
    "Run one photo with this mask: (result, photo) arrays."
    out = tmp_path / f'{mask_path.stem}_out.png'
    code, err = _run(inpaint_main, ['--checkpoint', ws / 'ck.pt', '--image', ws / 'photo.jpg', '--mask', mask_path,
                                    '--out', out, '--device', 'cpu'], capsys)
    assert code == 0, err
    return np.asarray(Image.open(out).convert('RGB')), np.asarray(Image.open(ws / 'photo.jpg').convert('RGB'))


@pytest.mark.parametrize('kind', ['0/1 png', 'red rgb', 'blue rgb', 'white rgb', 'rgba alpha', '1-bit'])
def test_mask_formats_fill_the_hole(ws, capsys, tmp_path, kind):
    h = _hole() > 0; p = tmp_path / 'm.png'
    if kind == '0/1 png': Image.fromarray(h.astype(np.uint8)).save(p)          # max value 1: 1 = hole, not "no hole"
    elif kind.endswith('rgb'):
        a = np.zeros((60, 80, 3), np.uint8); a[h] = {'red': (255, 0, 0), 'blue': (0, 0, 255), 'white': (255,) * 3}[kind.split()[0]]
        Image.fromarray(a).save(p)
    elif kind == 'rgba alpha':
        a = np.full((60, 80, 4), 255, np.uint8); a[h, 3] = 0; Image.fromarray(a, 'RGBA').save(p)   # transparent = hole
    else: Image.fromarray(h).convert('1').save(p)
    res, photo = _filled(ws, capsys, tmp_path, p)
    assert np.array_equal(res[~h], photo[~h])            # known pixels untouched
    assert (res[h] != photo[h]).any(axis=-1).mean() > 0.5  # the hole was filled


def test_mask_of_unclear_range_is_refused(ws, capsys, tmp_path):
    p = tmp_path / 'm.png'; Image.fromarray(_hole() // 7).save(p)                 # values 0 and 36
    code, err = _run(inpaint_main, ['--checkpoint', ws / 'ck.pt', '--image', ws / 'photo.jpg', '--mask', p,
                                    '--out', tmp_path / 'r.png', '--device', 'cpu'], capsys)
    assert code == 2 and 'has values 0 to 36' in err[0] and '0/1 (1 = hole)' in err[0], err
    assert not (tmp_path / 'r.png').exists()


def test_inverted_mask_is_refused(ws, capsys, tmp_path):
    p = tmp_path / 'm.png'; Image.fromarray(255 - _hole()).save(p)                # 91.7 % hole: white and black swapped
    code, err = _run(inpaint_main, ['--checkpoint', ws / 'ck.pt', '--image', ws / 'photo.jpg', '--mask', p,
                                    '--out', tmp_path / 'r.png', '--device', 'cpu'], capsys)
    assert code == 2 and err[0].startswith('twostage-inpaint: error: mask is 91.7% hole: it looks inverted'), err
    assert '--invert-mask yes | auto' in err[0] and 'with --debug' in err[1], err
    assert not (tmp_path / 'r.png').exists()


def test_read_mask_formats():
    h = _hole() > 0
    for m in (h, h.astype(np.uint8), h.astype(np.float32), _hole(), Image.fromarray(_hole()),
              Image.fromarray(h.astype(np.uint8)), np.stack([h * 255] * 3, -1).astype(np.uint8), torch.from_numpy(h)[None]):
        assert np.array_equal(read_mask(m, (80, 60))[0], h)
    _, w = read_mask(np.zeros((60, 80), np.uint8), (80, 60))
    assert 'no hole (values 0 to 0' in w[0]


# ---------------------------------------------------------------- twostage-inpaint, folders

@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / 'img').mkdir(); (tmp_path / 'mask').mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / 'img' / f'a{i}.png')
        Image.fromarray(_hole()).save(tmp_path / 'mask' / f'a{i}.png')
    return tmp_path


def _folder(ws, f, out, *extra):
    return ['--checkpoint', ws / 'ck.pt', '--images', f / 'img', '--masks', f / 'mask', '--out', out, '--device', 'cpu', *extra]


@pytest.mark.parametrize('which, flag', [('img', '--images'), ('mask', '--masks')])
def test_folder_out_is_an_input_folder(ws, folders, capsys, which, flag):
    before = _snapshot(folders)
    code, err = _run(inpaint_main, _folder(ws, folders, folders / which, '--overwrite'), capsys)
    assert code == 2 and len(err) == 1 and f"is the {flag} folder" in err[0], err
    assert _snapshot(folders) == before             # same names (a0.png): today's code would have overwritten them


def test_folder_two_photos_one_name(ws, folders, capsys):
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(folders / 'img' / 'a0.jpg')      # a0.jpg and a0.png
    code, err = _run(inpaint_main, _folder(ws, folders, folders / 'out'), capsys)
    assert code == 2 and 'a0.jpg and' in err[0] and 'a0.png would both be written to' in err[0], err
    assert not (folders / 'out').exists()


def test_folder_second_run_needs_overwrite(ws, folders, capsys):
    assert _run(inpaint_main, _folder(ws, folders, folders / 'out'), capsys)[0] == 0
    first = _snapshot(folders / 'out')
    code, err = _run(inpaint_main, _folder(ws, folders, folders / 'out'), capsys)
    assert code == 2 and 'already holds 3 files' in err[0] and '--overwrite' in err[0], err
    assert _snapshot(folders / 'out') == first
    assert _run(inpaint_main, _folder(ws, folders, folders / 'out', '--overwrite'), capsys)[0] == 0


def test_folder_ext_and_subfolder_out(ws, folders, capsys):
    before = _snapshot(folders / 'img', folders / 'mask')
    assert _run(inpaint_main, _folder(ws, folders, folders / 'img' / 'filled', '--ext', 'jpg'), capsys)[0] == 0
    assert sorted(p.name for p in (folders / 'img' / 'filled').glob('a*')) == ['a0.jpg', 'a1.jpg']
    assert Image.open(folders / 'img' / 'filled' / 'a0.jpg').format == 'JPEG'
    after = _snapshot(folders / 'img', folders / 'mask')
    assert {p: b for p, b in after.items() if 'filled' not in p.parts} == before
    code, err = _run(inpaint_main, _one(ws, folders / 'r.png', '--ext', 'jpg'), capsys)   # --ext is for folders
    assert code == 2 and '--ext is for folder mode' in err[-1]
    code, err = _run(inpaint_main, _folder(ws, folders, folders / 'gif', '--ext', 'gif'), capsys)
    assert code == 2 and "argument --ext: invalid choice: 'gif'" in err[-1] and not (folders / 'gif').exists(), err


# ---------------------------------------------------------------- twostage-eval

def _eval(ws, out, *extra, ck='ck.pt', data=None):
    return ['--checkpoint', ws / ck, '--profile', 'smoke', '--data', data or ws / 'faces', '--masks', ws / 'evmasks',
            '--out', out, *extra]


UNKNOWN_PROFILE = f"unknown profile 'fast'; valid: {', '.join(PROFILES)}"


def test_the_documented_profile_message_is_the_real_one():
    "nbs/14_inpaint.ipynb quotes the message of an unknown --profile; it names every profile there is."
    import re
    doc = (Path(__file__).parents[1] / 'nbs' / '14_inpaint.ipynb').read_text()
    quoted = re.findall(r"unknown profile 'fast'; valid: [a-z_, ]+", doc)
    assert len(quoted) == 2 and all(q == UNKNOWN_PROFILE for q in quoted), (quoted, UNKNOWN_PROFILE)


def test_eval_user_mistakes(ws, capsys, tmp_path):
    (tmp_path / 'empty').mkdir(); (tmp_path / 'corrupt').mkdir(); (tmp_path / 'junk.pt').write_bytes(b'junk')
    for i in range(24): (tmp_path / 'corrupt' / f'f{i:02d}.jpg').write_bytes(b'\xff\xd8 truncated')
    out = tmp_path / 'res.csv'
    cases = [(['--checkpoint', ws / 'ck.pt', '--profile', 'fast', '--out', out], UNKNOWN_PROFILE),
             (_eval(ws, out, data=tmp_path / 'nothing'), f"no face images found at {tmp_path / 'nothing'}"),
             (_eval(ws, out, data=tmp_path / 'empty'), f"no images (jpg/jpeg/png/webp/bmp) found in {tmp_path / 'empty'}"),
             (_eval(ws, out, data=tmp_path / 'corrupt'), f"reads from {tmp_path / 'corrupt'} is readable"),
             (_eval(ws, out, ck=tmp_path / 'none.pt'), 'checkpoint not found'),
             (_eval(ws, out, ck=tmp_path / 'junk.pt'), 'is not a twostage checkpoint')]
    for argv, says in cases:
        code, err = _run(eval_main, argv, capsys)
        assert code == 2 and err[0].startswith('twostage-eval: error: ') and says in err[0], (argv, err)
        assert len([l for l in err if 'warn' not in l.lower()]) <= 2, err
    with mock.patch('torch.cuda.is_available', lambda: False):
        code, err = _run(eval_main, _eval(ws, out, '--device', 'cuda'), capsys)
    assert code == 2 and err == ['twostage-eval: error: --device cuda: this machine has no CUDA GPU '
                                 '(torch.cuda.is_available() is False); use --device cpu']
    assert not out.exists()


def test_eval_never_overwrites_results(ws, capsys, tmp_path):
    out = tmp_path / 'results.csv'; out.write_text('earlier results\n')
    code, err = _run(eval_main, _eval(ws, out), capsys)
    assert code == 2 and err == [f'twostage-eval: error: --out {out} already exists; pass --overwrite to replace it, '
                                 'or choose another file name']
    assert out.read_text() == 'earlier results\n'
    code, err = _run(eval_main, _eval(ws, tmp_path), capsys)
    assert code == 2 and 'is a folder' in err[0]


def test_eval_knows_the_trained_stage(ws, capsys, tmp_path):
    code, err = _run(eval_main, _eval(ws, tmp_path / 'both.csv', '--stage', 'both', ck='stage1.pt'), capsys)
    assert code == 2 and 'stage 2 (fine network) is untrained' in err[0] and 'use --stage coarse' in err[0], err
    assert not (tmp_path / 'both.csv').exists()
    code, err = _run(eval_main, _eval(ws, tmp_path / 'auto.csv', ck='stage1.pt'), capsys)      # default --stage auto
    assert code == 0 and sum('note: this checkpoint finished stage 1 only' in l for l in err) == 1, err
    res = pd.read_csv(tmp_path / 'auto.csv')
    assert list(res.columns) == RESULT_COLUMNS
    assert res.stage.unique().tolist() == ['coarse'] and res['size'].unique().tolist() == [32]
    assert res.profile.unique().tolist() == ['smoke']
    assert _run(eval_main, _eval(ws, tmp_path / 'auto.csv', '--overwrite'), capsys)[0] == 0   # a two-stage checkpoint
    assert pd.read_csv(tmp_path / 'auto.csv').stage.unique().tolist() == ['both']


# ---------------------------------------------------------------- the real console scripts

def test_console_scripts_exit_2_without_traceback(ws, tmp_path):
    before = (ws / 'photo.jpg').read_bytes()
    argv = [str(a) for a in _one(ws, ws / 'photo.jpg', '--overwrite')]
    r = subprocess.run([str(BIN / 'twostage-inpaint'), *argv], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines() == [f"twostage-inpaint: error: --out {ws / 'photo.jpg'} is the --image file: "
                                             "refusing to overwrite an input; choose another file name"]
    r = subprocess.run([str(BIN / 'twostage-eval'), '--checkpoint', str(ws / 'ck.pt'), '--profile', 'fast', '--out',
                        str(tmp_path / 'r.csv'), '--debug'], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 1 and 'Traceback' in r.stderr and "unknown profile 'fast'" in r.stderr   # --debug: the traceback
    assert (ws / 'photo.jpg').read_bytes() == before
