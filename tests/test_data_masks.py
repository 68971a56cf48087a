"Cross-module and edge-case tests for twostage.data and twostage.masks (synthetic images in a tempdir; seconds on a CPU)."
import hashlib, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from twostage import core, data, masks
from twostage.data import (FaceDataset, UnreadableImage, glasses, index_faces, load_faces, load_image,
                           split_faces, square_resize)
from twostage.masks import (BUCKETS, FAMILIES, bucket_of, load_eval_masks, make_mask, mask_batch, write_eval_masks)

SHARED = core.default_data_dir()


def _celeba(root: Path, n=12, sizes=((89, 89), (128, 128), (178, 218), (40, 30)), missing_attr=(), partition=True):
    "A tiny CelebA-layout folder: img/, list_attr_celeba.txt (Eyeglasses on every 4th), list_eval_partition.txt."
    rs = np.random.RandomState(0); (root / 'img').mkdir(parents=True)
    names = [f'{i:06d}.jpg' for i in range(1, n + 1)]
    for i, nm in enumerate(names):
        w, h = sizes[i % len(sizes)]
        Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(root / 'img' / nm, quality=90)
    rows = [f"{nm} {1 if i % 4 == 0 else -1} -1" for i, nm in enumerate(names) if nm not in missing_attr]
    (root / 'list_attr_celeba.txt').write_text('\n'.join([str(len(rows)), 'Eyeglasses Male', *rows]) + '\n')
    if partition:  # like the shared faces: train and test only, no val
        (root / 'list_eval_partition.txt').write_text('\n'.join(f"{nm} {0 if i < n * 2 // 3 else 2}" for i, nm in enumerate(names)))
    return root


def test_celeba_layout_to_training_batch(tmp_path):
    "index -> split -> dataset -> masks -> the core conventions every model relies on."
    root = _celeba(tmp_path / 'celeba')
    fd = load_faces(root, size=32, seed=0)
    assert len(fd.df) == 12 and fd.df.eyeglasses.sum() == 3
    assert len(fd.test) == 4 and set(fd.test.partition) == {2}
    assert len(fd.train) + len(fd.val) == 8           # val carved from train only
    assert fd.glasses_test.eyeglasses.all()
    ds = fd.dataset('train', cache=True)
    b = ds.batch(range(min(4, len(ds))))
    m = mask_batch('mixed', len(b['id']), 32, 0)
    core.check_batch(b['image'], m, multiple=8)
    x = core.masked_input(b['image'], m)
    assert torch.all(x[m.expand_as(x) == 1] == 0)
    known = m.expand_as(x) == 0
    assert torch.equal(core.composite(torch.ones_like(x), b['image'], m)[known], b['image'][known])   # known pixels kept


def test_dataloader_default_collate_and_bad_files(tmp_path):
    root = _celeba(tmp_path / 'c', n=6)
    df = index_faces(root)
    bad = Path(df.path[2]); bad.write_bytes(bad.read_bytes()[:200])       # truncated after indexing
    ds = FaceDataset(df, size=16)
    dl = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False, num_workers=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        batches = list(dl)
    assert [len(b['id']) for b in batches] == [3, 3]
    assert batches[0]['image'].shape == (3, 3, 16, 16) and batches[0]['image'].dtype == torch.float32
    assert batches[0]['id'][2] == '000004' and int(batches[0]['index'][2]) == 3   # bad 3rd file -> next one
    assert ds.n_bad == 1 and sum('unreadable' in str(x.message) for x in w) == 1
    with pytest.raises(UnreadableImage, match='000003.jpg'): load_image(bad)


def test_missing_attribute_rows_warn_and_default(tmp_path):
    root = _celeba(tmp_path / 'c', n=8, missing_attr=('000001.jpg', '000005.jpg'))
    with pytest.warns(UserWarning, match='2 of 8 images have no row'):
        df = index_faces(root)
    miss = df.set_index('id').loc[['000001', '000005']]
    assert not miss.has_attrs.any() and not miss.eyeglasses.any()
    assert df.has_attrs.sum() == 6


def test_images_of_any_size_and_mode_reach_training_size(tmp_path):
    rs = np.random.RandomState(0)
    rgb = Image.fromarray(rs.randint(0, 256, (30, 50, 3), dtype=np.uint8))
    for name, im in {'l.png': rgb.convert('L'), 'rgba.png': rgb.convert('RGBA'), 'cmyk.jpg': rgb.convert('CMYK'),
                     'p.png': rgb.convert('P'), 'tiny.webp': rgb.resize((5, 7)), 'big.bmp': rgb.resize((300, 200))}.items():
        im.save(tmp_path / name)
    ds = FaceDataset(index_faces(tmp_path), size=24)
    assert len(ds) == 6                            # every mode and size indexed
    for i in range(len(ds)):
        x = ds[i]['image']
        assert x.shape == (3, 24, 24) and x.min() >= -1 and x.max() <= 1
    assert ds.n_bad == 0


def test_empty_and_missing_folders_say_how_to_point_at_data(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match='TWOSTAGE_DATA'): index_faces(tmp_path)
    with pytest.raises(FileNotFoundError, match='TWOSTAGE_DATA'): index_faces(tmp_path / 'nope')
    (tmp_path / 'x.png').write_bytes(b'')                        # an unreadable file still counts at index time
    monkeypatch.setenv('TWOSTAGE_DATA', str(tmp_path))
    assert len(index_faces()) == 1                               # the env var is the default root


def test_split_is_deterministic_and_stable_under_additions():
    ids = [f'img{i:04d}' for i in range(3000)]
    df = pd.DataFrame({'id': ids, 'partition': -1, 'eyeglasses': False})
    a = split_faces(df, seed=3)
    b = split_faces(pd.concat([df, df.assign(id=df.id + 'x')]), seed=3)   # more images: old ones keep their split
    for k in a: assert set(a[k].id) <= set(b[k].id)
    assert abs(len(a['test']) / 3000 - 0.1) < 0.03 and abs(len(a['val']) / 3000 - 0.05) < 0.02


@pytest.mark.skipif(SHARED is None, reason='shared CelebA faces (../shared/faces/celeba) not present beside the checkout')
def test_shared_faces_counts_and_indexing_speed():
    t0 = time.perf_counter(); df = index_faces(); dt = time.perf_counter() - t0
    assert len(df) == 26459 and int(df.eyeglasses.sum()) == 1392 and dt < 5
    s = split_faces(df)
    assert len(s['test']) == 16459 and len(s['train']) + len(s['val']) == 10000 and 0 < len(s['val']) < 1000
    assert len(glasses(s['test'])) == int(df[df.partition == 2].eyeglasses.sum())
    ds = FaceDataset(s['test'].iloc[:4], size=64)
    assert ds[0]['image'].shape == (3, 64, 64)


@pytest.mark.parametrize('family', list(FAMILIES))
def test_every_family_is_seeded_binary_and_nonempty(family):
    a = mask_batch(family, 6, 48, 7)
    assert a.shape == (6, 1, 48, 48) and a.dtype == torch.float32
    assert torch.equal(a, mask_batch(family, 6, 48, 7))
    assert set(a.unique().tolist()) <= {0.0, 1.0} and (core.hole_ratio(a) > 0).all()


def test_hole_ratio_distributions():
    r = {f: np.array([make_mask(f, 64, s).mean() for s in range(60)]) for f in ['thin', 'medium', 'thick', 'freeform', 'box', 'eyeband']}
    for f in ['thin', 'medium', 'thick']: assert r[f].max() <= 0.5 and r[f].min() > 0        # LaMa cap
    assert 0.2 < r['thin'].mean() < 0.4 and 0.15 < r['medium'].mean() < 0.35 and 0.15 < r['thick'].mean() < 0.35
    assert 0.1 < r['freeform'].mean() < 0.3
    assert 0.0625 - 1e-3 <= r['box'].min() and r['box'].max() <= 0.25 + 0.02
    assert 0.08 < r['eyeband'].mean() < 0.2
    w = {f: np.mean([masks.stroke_width(make_mask(f, 64, s)) for s in range(60)]) for f in ['thin', 'medium', 'thick']}
    assert w['thin'] < w['medium'] < w['thick']


def test_eyeband_position_is_an_argument():
    lo = np.mean([np.flatnonzero(make_mask('eyeband', 64, s, eye_y=0.3).any(1)).mean() for s in range(10)])
    hi = np.mean([np.flatnonzero(make_mask('eyeband', 64, s, eye_y=0.6).any(1)).mean() for s in range(10)])
    assert abs(lo / 64 - 0.3) < 0.04 and abs(hi / 64 - 0.6) < 0.04


def test_bucketed_hits_every_bucket():
    for b in BUCKETS:
        for s in range(3): assert bucket_of(make_mask('bucketed', 48, s, bucket=b).mean()) == b


def test_eval_masks_byte_identical_and_polarity(tmp_path):
    fams = ('thin', 'thick', 'eyeband', 'bucketed')
    m1 = write_eval_masks(tmp_path / 'a', 32, families=fams, n_per_family=2, seed=5)
    m2 = write_eval_masks(tmp_path / 'b', 32, families=fams, n_per_family=2, seed=5)
    h = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
    assert h(tmp_path / 'a') == h(tmp_path / 'b') and len(h(tmp_path / 'a')) == len(m1) + 1   # + manifest.csv
    assert list(m1.columns[:5]) == ['file', 'family', 'seed', 'index', 'size'] and {'hole_ratio', 'bucket'} <= set(m1.columns)
    df, t = load_eval_masks(tmp_path / 'a')
    assert t.shape == (len(df), 1, 32, 32)
    for f, m in zip(df.file, t):
        png = np.asarray(Image.open(tmp_path / 'a' / f))
        assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255} and (png == 255).any()
        assert np.array_equal(png == 255, m[0].numpy() == 1)                                  # 255 = hole = 1
    np.testing.assert_allclose(core.hole_ratio(t).numpy(), df.hole_ratio.values, atol=1e-5)
    assert (df[df.family == 'bucketed'].groupby('bucket').size() == 2).all()


def test_make_mask_is_fast_enough_for_training():
    rng = np.random.default_rng(0)
    for f in ['mixed', 'thin', 'freeform']:
        t0 = time.perf_counter()
        for _ in range(50): make_mask(f, 64, rng)
        assert (time.perf_counter() - t0) / 50 < 0.004, f                 # budget 2 ms; 2x slack for a busy CPU


def test_unknown_names_raise_value_error_naming_valid_keys():
    with pytest.raises(ValueError, match='freeform'): make_mask('blob', 64, 0)
    with pytest.raises(ValueError, match='glasses_test'): data.FaceData(Path('.'), 64, 0, *[pd.DataFrame()] * 5).dataset('dev')


def test_figures_are_written(tmp_path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    root = _celeba(tmp_path / 'c', n=8)
    for fig, name in [(data.fig_faces(load_faces(root, size=16), n=3, size=16), 'faces.png'), (masks.fig_masks(size=32, n=2), 'masks.png')]:
        out = tmp_path / name; fig.savefig(out, dpi=60); plt.close(fig)
        assert out.stat().st_size > 1000


# --- eyeframe: partial holes over the glasses, the rest of the frame visible ---------------------------------

def test_eyeframe_hole_ratio_range_at_any_size():
    for size, n in [(32, 100), (64, 300), (128, 300), (256, 40), ((48, 80), 100)]:
        r = np.array([make_mask('eyeframe', size, s).mean() for s in range(n)])
        assert r.shape == (n,) and make_mask('eyeframe', size, 0).shape == masks._hw(size)
        assert 0.025 <= r.min() and r.max() <= 0.12 and 0.045 < r.mean() < 0.07, (size, r.min(), r.max(), r.mean())
        if size in (64, 128): assert 0.03 <= r.min(), (size, r.min())     # drawn area 4-12 %, rasterised >= 3 %
    for style in masks.EYEFRAME_STYLES:                                    # both styles honour the range
        r = np.array([masks.eyeframe_mask(128, s, style=style).mean() for s in range(100)])
        assert 0.035 <= r.min() and r.max() <= 0.12, style
    with pytest.raises(ValueError, match='lens, stripes'): masks.eyeframe_mask(64, 0, style='blob')


def test_eyeframe_is_deterministic_per_seed():
    a = mask_batch('eyeframe', 8, 64, 11)
    assert torch.equal(a, mask_batch('eyeframe', 8, 64, 11)) and not torch.equal(a, mask_batch('eyeframe', 8, 64, 12))
    assert np.array_equal(make_mask('eyeframe', 96, 3), make_mask('eyeframe', 96, np.random.default_rng(3)))
    assert len({a[i].numpy().tobytes() for i in range(8)}) == 8                       # masks of one batch differ


def test_eyeframe_only_touches_the_eye_region():
    for size in (37, 64, 128):
        for s in range(150):
            ys, xs = np.nonzero(make_mask('eyeframe', size, s))
            assert ys.min() >= 0.25 * size and ys.max() < 0.66 * size, (size, s)   # nothing on the forehead or below the nose
            assert xs.min() >= 0.19 * size and xs.max() < 0.81 * size, (size, s)   # nor at the sides (temples, outer rims)
    lo = np.mean([np.nonzero(make_mask('eyeframe', 64, s, eye_y=0.3))[0].mean() for s in range(20)])
    assert abs(lo / 64 - 0.3) < 0.03                                               # the eye row is an argument


def _runs(cols):
    "(start, stop) of each run of True in a 1-d boolean array."
    d = np.diff(np.r_[0, cols.astype(int), 0]); return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def test_eyeframe_leaves_the_frame_visible_around_every_hole():
    "Along the eye row, every hidden piece lies between visible pieces of the glasses span, whatever the style."
    W = 200
    for s in range(100):
        for style in masks.EYEFRAME_STYLES:
            m = masks.eyeframe_mask(W, s, style=style, tilt=0, jitter=0, shift=0)   # a face centred on W / 2
            row = m[int(0.45 * W)] > 0; runs = _runs(row)
            assert runs and runs[0][0] > 0.2 * W and runs[-1][1] < 0.8 * W, (s, style, runs)   # both ends of the frame visible
            assert row[int(0.2 * W):int(0.8 * W)].mean() < 0.6                                # most of the frame stays visible
            if style == 'lens':                  # the bridge and one lens: one run over the centre line, not symmetric
                (a, b), = runs
                near, far = sorted([W / 2 - a, b - W / 2])       # 0.04-0.1 past the bridge, 0.14-0.22 into the lens
                assert 0.04 * W - 1 <= near <= 0.1 * W + 1 and 0.14 * W - 1 <= far <= 0.22 * W + 1, (s, a, b)
            else:                                # 2-3 stripes with at least ~gap of visible frame between them
                assert len(runs) in (2, 3) and all(c - b >= 0.05 * W - 1 for (_, b), (c, _) in zip(runs, runs[1:])), (s, runs)


# digests of mask_batch(family, 3, 48, seed=0) taken before 'eyeframe' existed: adding a family changes no other
OLD_FAMILIES = {'freeform': '47f947efa25b28f5', 'thin': '3e05f6d853cd6355', 'medium': '197960c7988b571f',
                'thick': 'f1a958cedd886816', 'box': '4cfe4a8b556ca612', 'center': 'cbc62b6b5c0a1e9d',
                'eyeband': '10c505ee0a6e093c', 'bucketed': '852bf65a04156b6e', 'mixed': 'ec983c5e831d5a1f'}


def test_adding_eyeframe_shifts_no_other_family(tmp_path):
    got = {f: hashlib.sha256(mask_batch(f, 3, 48, 0).numpy().tobytes()).hexdigest()[:16] for f in OLD_FAMILIES}
    assert got == OLD_FAMILIES
    assert 'eyeframe' in FAMILIES and 'eyeframe' not in masks.EVAL_FAMILIES and 'eyeframe' not in masks.MIX
    a = write_eval_masks(tmp_path / 'a', 32, n_per_family=2, seed=4)                     # the default set
    b = write_eval_masks(tmp_path / 'b', 32, families=('eyeframe',) + masks.EVAL_FAMILIES, n_per_family=2, seed=4)
    pd.testing.assert_frame_equal(b[b.family != 'eyeframe'].reset_index(drop=True), a)
    for f in a.file: assert (tmp_path / 'a' / f).read_bytes() == (tmp_path / 'b' / f).read_bytes(), f
    assert (b.family == 'eyeframe').sum() == 2


def test_fig_eyeframe_draws_masked_methods_and_real(tmp_path):
    import matplotlib; matplotlib.use('Agg')
    from twostage.figures import fig_eyeframe, save_figure
    ims = torch.rand(6, 3, 48, 48) * 2 - 1; ms = mask_batch('eyeframe', 6, 48, 0)
    fig = fig_eyeframe(ims, ms, {'a': ims, 'b': -ims, 'c': ims * 0}, n=4)
    assert len(fig.axes) == 4 * 5 and [ax.get_title() for ax in fig.axes[:5]] == ['masked', 'a', 'b', 'c', 'real']
    p = save_figure(fig, 'eyeframe', tmp_path); assert p.parent == tmp_path and p.stat().st_size > 1000
    assert len(fig_eyeframe(ims, ms, n=10).axes) == 6 * 2                              # n clipped to the faces given
