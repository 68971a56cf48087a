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


from conftest import run_cli as _run   # (exit status, stderr lines), never a traceback


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


def test_folder_without_photos_is_refused(ws, folders, capsys):
    (folders / 'none').mkdir(); (folders / 'none' / 'notes.txt').write_text('no photos here')
    code, err = _run(inpaint_main, ['--checkpoint', ws / 'ck.pt', '--images', folders / 'none', '--masks', folders / 'mask',
                                    '--out', folders / 'out', '--device', 'cpu'], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"twostage-inpaint: error: no photos found in --images {folders / 'none'}"), err
    assert not (folders / 'out').exists()


def test_folder_exit_status_says_whether_anything_was_done(ws, folders, capsys):
    "Nothing inpainted (every pair skipped): exit 1 and a summary line; some skipped: exit 0, and the skipped count on stderr."
    for f in (folders / 'mask').iterdir(): f.write_bytes(b'junk')                     # every mask unreadable
    code, err = _run(inpaint_main, _folder(ws, folders, folders / 'out'), capsys)
    assert code == 1 and err[-1] == (f"twostage-inpaint: error: no photo was inpainted: all 2 were skipped (reasons above and "
                                     f"in {folders / 'out' / 'report.json'})"), err
    Image.fromarray(_hole()).save(folders / 'mask' / 'a0.png')
    code, err = _run(inpaint_main, _folder(ws, folders, folders / 'out', '--overwrite'), capsys)
    assert code == 0 and err[-1] == (f"twostage-inpaint: 1 of 2 photos inpainted, 1 skipped (reasons above and in "
                                     f"{folders / 'out' / 'report.json'})"), err


def test_folder_reads_tif_photos(ws, folders, capsys):
    Image.open(folders / 'img' / 'a0.png').save(folders / 'img' / 't.tif'); Image.fromarray(_hole()).save(folders / 'mask' / 't.png')
    code, err = _run(inpaint_main, _folder(ws, folders, folders / 'out', '--ext', 'tif'), capsys)
    assert code == 0 and sorted(p.name for p in (folders / 'out').glob('*.tif')) == ['a0.tif', 'a1.tif', 't.tif'], err


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
             (_eval(ws, out, data=tmp_path / 'empty'), f"no images (jpg/jpeg/png/webp/bmp/tif/tiff) found in {tmp_path / 'empty'}"),
             (_eval(ws, out, data=tmp_path / 'corrupt'), f"reads from {tmp_path / 'corrupt'} is readable"),
             (_eval(ws, out, ck=tmp_path / 'none.pt'), 'checkpoint not found'),
             (_eval(ws, out, ck=tmp_path / 'junk.pt'), 'is not a twostage checkpoint')]
    for argv, says in cases:
        code, err = _run(eval_main, argv, capsys)
        assert code == 2 and err[0].startswith('twostage-eval: error: ') and says in err[0], (argv, err)
        assert len([l for l in err if 'warn' not in l.lower()]) <= 2, err
        if 'images found' in says or 'no images' in says: assert '--data DIR' in err[0] and '--faces DIR' in err[0] and 'pass a path' not in err[0], err
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


def test_eval_without_faces_names_the_flags(ws, capsys, tmp_path, monkeypatch):
    "No --data, no --faces, no $TWOSTAGE_DATA and no faces beside the checkout: the message says which flags give faces."
    monkeypatch.delenv('TWOSTAGE_DATA', raising=False)
    with mock.patch('twostage.core.default_data_dir', lambda: None):
        code, err = _run(eval_main, ['--checkpoint', ws / 'ck.pt', '--profile', 'smoke', '--masks', ws / 'evmasks',
                                     '--out', tmp_path / 'r.csv'], capsys)
    assert code == 2 and err == ["twostage-eval: error: no face images found. twostage-eval reads faces from --data DIR (a CelebA "
                                 "folder or any folder of face images: the profile's test split) or --faces DIR (every face of "
                                 "any folder), else from $TWOSTAGE_DATA"], err


def test_eval_out_must_be_csv(ws, capsys, tmp_path):
    "--out names a CSV file: a photo (or any other extension) is refused, even with --overwrite, and left as it was."
    (tmp_path / 'face.jpg').write_bytes(b'\xff\xd8 a photo')
    for name in ('face.jpg', 'results', 'results.csv.bak'):
        code, err = _run(eval_main, _eval(ws, tmp_path / name, '--overwrite'), capsys)
        assert code == 2 and err == [f"twostage-eval: error: --out {tmp_path / name}: the results are a CSV file, so --out must "
                                     f"end in .csv (e.g. {(tmp_path / name).with_suffix('.csv')})"], err
    assert (tmp_path / 'face.jpg').read_bytes() == b'\xff\xd8 a photo' and not (tmp_path / 'results').exists()
    assert _run(eval_main, _eval(ws, tmp_path / 'R.CSV'), capsys)[0] == 0


def test_eval_experiment_column(ws, capsys, tmp_path):
    "The results' experiment: the run's name from its done.json, else the checkpoint's folder; the shipped model's release name."
    from twostage.commands import experiment_name
    run = tmp_path / 'runs' / 'smoke' / 'stage2' / '0123abcd'; run.mkdir(parents=True)
    (run / 'last.pt').write_bytes((ws / 'ck.pt').read_bytes())
    assert _run(eval_main, _eval(ws, tmp_path / 'a.csv', ck=run / 'last.pt'), capsys)[0] == 0
    assert pd.read_csv(tmp_path / 'a.csv').experiment.unique().tolist() == ['0123abcd']     # no record: the folder's name
    (run / 'done.json').write_text('{"experiment": "full", "experiments": ["full"]}')
    assert _run(eval_main, _eval(ws, tmp_path / 'b.csv', ck=run / 'last.pt'), capsys)[0] == 0
    assert pd.read_csv(tmp_path / 'b.csv').experiment.unique().tolist() == ['full']         # the run's experiment, not its key
    assert experiment_name('release', {'release': {'name': 'release128'}}) == 'release128'
    assert experiment_name(run / 'last.pt', {'experiment': 'no_fem'}) == 'no_fem'


def test_eval_skips_an_unreadable_face(ws, capsys, tmp_path):
    "An unreadable face is skipped and counted, never replaced by its neighbour (which would count twice)."
    import torch
    import twostage.commands as C
    faces = tmp_path / 'faces'; faces.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4): Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(faces / f'f{i}.png')
    (faces / 'f1.png').write_bytes(b'\x89PNG broken')
    seen = {}
    def spy(fn, sets, *args, **kw):
        seen.update(sets); return evaluate(fn, sets, *args, **kw)
    evaluate = C.evaluate
    with mock.patch.object(C, 'evaluate', spy):
        code, err = _run(eval_main, ['--checkpoint', ws / 'ck.pt', '--profile', 'smoke', '--faces', faces, '--masks',
                                     ws / 'evmasks', '--out', tmp_path / 'r.csv'], capsys)
    assert code == 0, err
    x = seen['all']
    assert len(x) == 3 and len(torch.unique(x.flatten(1), dim=0)) == 3         # three faces, each once
    assert any('1 of 4 faces (all) are unreadable and were left out' in l and 'f1.png' in l for l in err), err


# ---------------------------------------------------------------- photos and masks that are not what they seem

def test_a_photo_as_the_mask_is_refused(ws, capsys, tmp_path):
    "A photo given as the mask (or photo and mask swapped) is refused, not read as a mask that is mostly hole."
    from twostage.core import default_data_dir
    cases = [(ws / 'photo.jpg', ws / 'photo.jpg'), (ws / 'mask.png', ws / 'photo.jpg')]      # the photo twice; swapped
    face = next(iter(sorted((default_data_dir() or Path('/nonexistent')).glob('img/*.jpg'))), None)
    if face is not None: cases.append((face, face))                                          # a real face
    for image, mask in cases:
        code, err = _run(inpaint_main, ['--checkpoint', ws / 'ck.pt', '--image', image, '--mask', mask,
                                        '--out', tmp_path / 'r.png', '--device', 'cpu'], capsys)
        assert code == 2 and err[0].startswith(f"twostage-inpaint: error: mask {mask} looks like a photo, not a mask: ") and \
            '% of its pixels are mid-grey' in err[0], err
    assert not (tmp_path / 'r.png').exists()
    # a real mask saved as JPEG (ringing at its edges) and one with anti-aliased strokes still pass
    from PIL import ImageDraw
    Image.fromarray(_hole()).save(tmp_path / 'm.jpg', quality=60)
    big = Image.new('L', (320, 240)); ImageDraw.Draw(big).line([(10, 20), (300, 200), (60, 220)], fill=255, width=14)
    big.resize((80, 60), Image.Resampling.LANCZOS).save(tmp_path / 'aa.png')
    for m in ('m.jpg', 'aa.png'):
        code, err = _run(inpaint_main, ['--checkpoint', ws / 'ck.pt', '--image', ws / 'photo.jpg', '--mask', tmp_path / m,
                                        '--out', tmp_path / f'{m}.png', '--device', 'cpu'], capsys)
        assert code == 0, err


@pytest.mark.parametrize('size, says', [('0', '--size must be a positive number, got 0'), ('-5', '--size must be a positive number, got -5')])
def test_inpaint_size_must_be_positive(ws, capsys, tmp_path, size, says):
    code, err = _run(inpaint_main, _one(ws, tmp_path / 'r.png', '--size', size), capsys)
    assert code == 2 and err == [f'twostage-inpaint: error: {says}'] and not (tmp_path / 'r.png').exists(), err


def test_inpaint_size_rounded_up_is_said(ws, capsys, tmp_path):
    code, err = _run(inpaint_main, _one(ws, tmp_path / 'r.png', '--size', '33'), capsys)
    assert code == 0 and "warning: size 33 is not a multiple of 8, the model's downsampling factor: ran at 40 px" in err, err


def test_profile_help_names_every_profile(capsys):
    with pytest.raises(SystemExit): inpaint_main(['--help'])
    out = ' '.join(capsys.readouterr().out.split())
    assert f"profile of --experiment ({' | '.join(PROFILES)})" in out, out


# ---------------------------------------------------------------- the photo's kind, the output format

def _grey_alpha_photos(d):
    "A grey, a 16-bit grey and a half-transparent RGBA photo, 80 x 60 (values no 8-bit or flattened image keeps)."
    rng = np.random.default_rng(4)
    g = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    Image.fromarray(g).save(d / 'grey.png')
    g16 = g.astype(np.uint16) * 256 + 7; Image.fromarray(g16).save(d / 'grey16.png')
    rgba = rng.integers(0, 256, (60, 80, 4), dtype=np.uint8); Image.fromarray(rgba, 'RGBA').save(d / 'rgba.png')
    return g, g16, rgba


def test_grey_and_transparent_photos_keep_their_kind(ws, capsys, tmp_path):
    g, g16, rgba = _grey_alpha_photos(tmp_path); h = _hole() > 0
    def run(photo, out):
        code, err = _run(inpaint_main, ['--checkpoint', ws / 'ck.pt', '--image', tmp_path / photo, '--mask', ws / 'mask.png',
                                        '--out', tmp_path / out, '--device', 'cpu'], capsys)
        assert code == 0, err
        return Image.open(tmp_path / out), err
    r, err = run('grey.png', 'g.png')
    assert r.mode == 'L' and np.array_equal(np.asarray(r)[~h], g[~h]) and not err        # grey: no coloured fill
    r, err = run('grey16.png', 'g16.png')
    assert r.mode == 'I;16' and np.array_equal(np.asarray(r)[~h], g16[~h]) and not err   # 16 bits kept, not reduced to 8
    r, err = run('rgba.png', 'a.png'); a = np.asarray(r)
    assert r.mode == 'RGBA' and np.array_equal(a[~h], rgba[~h]) and (a[h][:, 3] == 255).all()   # alpha and the colour under it
    assert err == ['warning: the photo has alpha (RGBA): the model saw it over white; alpha kept outside the hole, filled pixels opaque']
    r, err = run('rgba.png', 'a.webp'); assert r.mode == 'RGBA' and np.array_equal(np.asarray(r)[~h], rgba[~h])   # WebP: exact
    # a format that cannot hold the kind: converted, and the warnings say how
    r, err = run('grey16.png', 'g16.jpg')
    assert r.mode == 'L' and any('JPEG cannot hold I;16 grey: written as 8-bit grey' in l for l in err), err
    r, err = run('rgba.png', 'a.bmp')
    assert r.mode == 'RGB' and any('BMP cannot hold alpha: the RGBA result was composited over white' in l for l in err), err


def test_jpeg_output_says_it_is_lossy_and_icc_profiles_are_kept(ws, capsys, tmp_path):
    from PIL import ImageCms
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
    Image.open(ws / 'photo.jpg').save(tmp_path / 'p.jpg', quality=95, icc_profile=srgb)
    for ext in ('.jpg', '.png', '.webp', '.tif'):
        out = tmp_path / f'r{ext}'
        code, err = _run(inpaint_main, ['--checkpoint', ws / 'ck.pt', '--image', tmp_path / 'p.jpg', '--mask', ws / 'mask.png',
                                        '--out', out, '--device', 'cpu'], capsys)
        assert code == 0 and Image.open(out).info.get('icc_profile') == srgb, (ext, err)
        lossy = [l for l in err if 'JPEG re-encodes every pixel, the known ones too' in l and '.png, .webp or .tif keep them exact' in l]
        assert len(lossy) == (ext == '.jpg'), err
