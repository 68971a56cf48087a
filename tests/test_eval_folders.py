"`twostage-eval` on any folder of masks (laid out like NVIDIA's irregular test set) and any folder of faces."
import contextlib, io
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from twostage.evaluate import read_mask_folder, RESULT_COLUMNS
from twostage.commands import eval_main

N = 64   # mask side; the tiny checkpoint evaluates at 32 px, so every mask is also resized


def _box(y0, y1, x0, x1, hi=255, side=N):
    a = np.zeros((side, side), np.uint8); a[y0:y1, x0:x1] = hi
    return a


def _c(k): return (N - k) // 2   # top-left of a centred k x k box


# file -> (array as stored, bucket, touches the border); boxes on even pixels keep their area at 32 px
NVIDIA_LIKE = {
    '00000.png': (_box(_c(16), _c(16) + 16, _c(16), _c(16) + 16), '0-10%', False),          # 6.25 %
    '00001.png': (_box(0, 16, 0, 16), '0-10%', True),
    '00002.png': (_box(_c(24), _c(24) + 24, _c(24), _c(24) + 24, hi=1), '10-20%', False),   # 0/1-valued, 14.1 %
    '00003.png': (_box(0, 10, 0, N, hi=1), '10-20%', True),                                 # 0/1-valued, 15.6 %
    '00004.png': (_box(32, 96, 32, 96, side=128), '20-30%', False),                         # stored at 128 px, 25 %
    '00005.png': (_box(_c(36), _c(36) + 36, _c(36), _c(36) + 36), '30-40%', False),         # 31.6 %
    '00006.png': (_box(0, 40, N - 40, N), '30-40%', True),                                  # 39.1 %
    '00007.png': (_box(_c(44), _c(44) + 44, _c(44), _c(44) + 44), '40-50%', False),         # 47.3 %
    '00008.png': (_box(_c(48), _c(48) + 48, _c(48), _c(48) + 48), '50-60%', False),         # 56.3 %
    '00009.png': (_box(0, 36, 0, N), '50-60%', True),                                       # 56.3 %
    '00010.png': (255 - _box(_c(16), _c(16) + 16, _c(16), _c(16) + 16), '0-10%', False),   # black = hole: inverted
    '00011.png': (np.stack([_box(_c(20), _c(20) + 20, _c(20), _c(20) + 20)] * 3, -1), '0-10%', False),  # RGB, 9.8 %
}


@pytest.fixture(scope='module')
def mask_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('nvidia_like')
    for f, (a, _, _) in NVIDIA_LIKE.items(): Image.fromarray(a).save(d / f)
    (d / '00012.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')      # corrupt
    return d


@pytest.fixture(scope='module')
def face_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('faces')
    rng = np.random.default_rng(0)
    for i in range(4): Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f'face{i}.jpg')
    return d


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    from twostage.train import tiny_checkpoint
    return tiny_checkpoint(tmp_path_factory.mktemp('ck') / 'tiny' / 'last.pt', size=32)


def _run(argv):
    "Exit code and stderr of `twostage-eval argv`."
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try: code = eval_main(argv)
        except SystemExit as e: code = e.code
    return code, err.getvalue()


def test_buckets_borders_polarity_and_corrupt_file(mask_dir):
    with pytest.raises(ValueError, match='look inverted'): read_mask_folder(mask_dir, 32)      # 'check' refuses
    with pytest.warns(UserWarning, match=r'skipped 1 of 13 .*00012\.png'):
        man, m = read_mask_folder(mask_dir, 32, invert='auto')
    assert man.attrs['n_skipped'] == 1 and man.attrs['first_skipped'].startswith('00012.png')
    assert tuple(m.shape) == (12, 1, 32, 32)
    assert dict(zip(man.file, zip(man.bucket, man.border))) == {f: (b, t) for f, (_, b, t) in NVIDIA_LIKE.items()}
    assert man.file[man.inverted].tolist() == ['00010.png'] and set(man.family) == {'folder'}
    assert man.hole_ratio[man.file == '00004.png'].item() == pytest.approx(0.25)
    with pytest.warns(UserWarning):
        as_stored = read_mask_folder(mask_dir, 32, invert=False)[0].set_index('file')
        flipped = read_mask_folder(mask_dir, 32, invert=True)[0].set_index('file')
    assert as_stored.bucket['00010.png'] == '>60%' and not as_stored.inverted.any()
    assert flipped.bucket['00010.png'] == '0-10%' and flipped.bucket['00000.png'] == '>60%'


def test_eval_cli_on_mask_and_face_folders(mask_dir, face_dir, ckpt, tmp_path):
    out = tmp_path / 'nvidia.csv'
    argv = ['--checkpoint', str(ckpt), '--masks', str(mask_dir), '--faces', str(face_dir), '--out', str(out),
            '--profile', 'smoke', '--device', 'cpu']
    code, err = _run(argv)                                   # the black-hole mask is refused under the default 'check'
    assert code == 2 and '--mask-polarity black-hole' in err and 'Traceback' not in err and not out.exists()
    code, err = _run(argv + ['--mask-polarity', 'auto'])
    assert code == 0, err
    assert 'skipped 1 of 13 mask files' in err and 'faces: 4 from' in err
    res = pd.read_csv(out)
    assert list(res.columns) == RESULT_COLUMNS
    assert set(res.family) == {'folder', 'folder/border', 'folder/no_border'}
    assert res['size'].unique().tolist() == [32] and res.split.unique().tolist() == ['all']
    n = res[res.metric == 'psnr'].set_index(['family', 'bucket']).n
    assert n['folder', 'all'] == 12 and n['folder/border', 'all'] == 4 and n['folder/no_border', 'all'] == 8
    want = pd.Series([b for _, b, _ in NVIDIA_LIKE.values()]).value_counts()
    assert n['folder'].drop('all').sort_index().to_dict() == want.sort_index().to_dict()   # grouped by hole-area bucket
    assert np.isfinite(res[res.metric == 'ssim'].value).all()
    # an existing --out is refused without --overwrite, and kept
    before = out.read_text()
    code, err = _run(argv + ['--mask-polarity', 'auto'])
    assert code == 2 and 'already exists; pass --overwrite' in err and out.read_text() == before
    # --overwrite, --limit and --n-faces
    code, err = _run(argv + ['--mask-polarity', 'auto', '--overwrite', '--limit', '5', '--n-faces', '2'])
    assert code == 0, err
    res = pd.read_csv(out)
    assert res[(res.metric == 'psnr') & (res.family == 'folder') & (res.bucket == 'all')].n.item() == 5
    assert 'faces: 2 from' in err


def test_eval_cli_saved_set_and_bad_folders(face_dir, ckpt, tmp_path):
    from twostage.masks import write_eval_masks
    saved = tmp_path / 'saved'; write_eval_masks(saved, 32, families=('box',), n_per_family=4)
    out = tmp_path / 'saved.csv'
    code, err = _run(['--checkpoint', str(ckpt), '--masks', str(saved), '--faces', str(face_dir), '--out', str(out),
                      '--profile', 'smoke', '--device', 'cpu'])
    assert code == 0, err                                    # a saved set (manifest.csv) is used as before
    res = pd.read_csv(out)
    assert set(res.family) == {'box'} and res[(res.metric == 'psnr') & (res.bucket == 'all')].n.item() == 4
    junk = tmp_path / 'junk'; junk.mkdir(); (junk / 'a.png').write_bytes(b'junk'); (junk / 'b.png').write_bytes(b'')
    code, err = _run(['--checkpoint', str(ckpt), '--masks', str(junk), '--faces', str(face_dir), '--out',
                      str(tmp_path / 'j.csv'), '--profile', 'smoke', '--device', 'cpu'])
    assert code == 2 and 'none of the 2 mask files' in err and 'Traceback' not in err
    code, err = _run(['--checkpoint', str(ckpt), '--faces', str(face_dir), '--out', str(tmp_path / 's.csv'),
                      '--size', '20', '--device', 'cpu'])
    assert code == 2 and '--size 20: this model needs a multiple of' in err


def test_eval_of_a_celeba_folder_scores_the_profile_s_held_out_faces(mask_dir, ckpt, tmp_path):
    "A CelebA folder's official test partition is not the split of a profile that hashes ids: eval takes the profile's own test faces."
    from twostage.experiments import get_profile
    from conftest import celeba_test_partition
    d = tmp_path / 'celeba'; names = celeba_test_partition(d, 120, pixels=lambda i: 2 * i)   # every face in CelebA's test partition
    prof = get_profile('smoke')
    held = set(prof.faces(d).test.path.map(lambda p: Path(p).name))
    assert 0 < len(held) < len(names)
    out = tmp_path / 'r.csv'
    code, err = _run(['--checkpoint', str(ckpt), '--masks', str(mask_dir), '--mask-polarity', 'auto', '--faces', str(d),
                      '--out', str(out), '--profile', 'smoke', '--device', 'cpu'])
    assert code == 0, err
    assert f'faces: {len(held)} from' in err and "smoke profile's held-out faces" in err, err
