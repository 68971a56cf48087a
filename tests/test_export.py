"ONNX export: parity with PyTorch on a real face, dynamic batch, size checks, the twostage-export command, and no training code on the way."
import os
import shutil, subprocess, sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip('onnxruntime', reason='ONNX export tests need onnxruntime: pip install "twostage[onnx]"')
pytest.importorskip('onnx', reason='ONNX export tests need onnx: pip install "twostage[onnx]"')

from twostage.export import export_onnx, load_onnx, parity, probe_pair, main, PARITY_TOL
from twostage.models.twostage import build_model, TINY_CFG
from twostage.experiments import RELEASE_CFG   # the release configuration (biharmonic-fill input)

torch.set_num_threads(1)
FACE = Path(os.environ.get('TWOSTAGE_DATA') or Path(__file__).resolve().parents[1].parent / 'shared' / 'faces' / 'celeba') / 'img' / '202599.jpg'
PULLPUSH_CFG = replace(RELEASE_CFG, coarse_prefill='pullpush')          # the pull-push prefill option (residual)
HARMONIC_CFG = replace(RELEASE_CFG, coarse_prefill='harmonic')          # the harmonic prefill option (residual)


def seeded_model(cfg, seed=0):
    "A seeded random generator in eval mode, with random output heads (pullpush / residual heads start at zero: parity would be trivial)."
    torch.manual_seed(seed)
    m = build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for h in (m.coarse.head, m.fine.head): h.weight.copy_(torch.randn(h.weight.shape, generator=g) * 0.05)
    return m


@pytest.fixture(scope='module')
def face():
    from twostage.data import load_image
    from twostage.core import pil_to_tensor
    from twostage.masks import mask_batch
    assert FACE.exists(), f"the real test face is missing: {FACE}"
    x = pil_to_tensor(load_image(FACE))[None]
    assert x.shape == (1, 3, 128, 128)
    return x, mask_batch('medium', 1, 128, rng=0)


@pytest.mark.parametrize('name,cfg', [('release', RELEASE_CFG), ('pullpush', PULLPUSH_CFG), ('harmonic', HARMONIC_CFG), ('tiny', TINY_CFG)])
def test_export_parity_on_a_real_face(name, cfg, face, tmp_path):
    m = seeded_model(cfg)
    p = export_onnx(m, tmp_path / f'{name}.onnx', 128, model_cfg=cfg)
    inp = load_onnx(p, threads=1)
    assert inp.model_cfg == cfg and inp.size == 128 and inp.stage == 'both'
    d = parity(m, inp, *face)
    assert d <= PARITY_TOL, d
    # the network really contributes: the ONNX output differs from a plain copy of the known pixels
    out = inp(*face)['out']
    assert float(((out - face[0]).abs() * face[1]).max()) > 0.01



def test_export_with_edge_blend(tmp_path):
    "The release's edge blend exports with the generator (fixed erosions, the CG fill): parity, and its arguments in the metadata."
    from twostage.models.blend import EdgeBlend
    import json
    m = seeded_model(TINY_CFG); m.blend = EdgeBlend(near=1.0, far=0.25, tau=2.0)
    inp = load_onnx(export_onnx(m, tmp_path / 'blend.onnx', 32), threads=1)   # 32 px: the unrolled CG fill of 128 px takes a minute
    assert json.loads(inp.meta['blend']) == m.blend.to_dict()
    pair = probe_pair(32, seed=5)
    assert parity(m, inp, *pair) <= PARITY_TOL
    with torch.no_grad(): r = m(*pair)
    assert not torch.equal(r['out'], r['unblended'])   # the blend is really in the graph


@pytest.mark.parametrize('blend_kw, term, probes', [
    (dict(sharpen=0.5), 'sharpen', ('small',)),                            # the small-hole branch
    (dict(sharpen=0.25, flat_scale=0.5), 'flat_scale', ('small', 'large')),  # the smooth fill where the surroundings are plain
])
def test_export_with_blend_term(tmp_path, blend_kw, term, probes):
    "A term of the shipped blend (`EdgeBlend(sharpen=...)`, `EdgeBlend(flat_scale=...)`) is in the graph, and within parity."
    import json
    from twostage.models.blend import EdgeBlend
    m = seeded_model(TINY_CFG); m.blend = EdgeBlend(near=0.9, far=0.35, tau=4.0, near_slope=5.0, far_slope=2.0, **blend_kw)
    pairs = {'small': probe_pair(32, seed=4, small_hole=True), 'large': probe_pair(32, seed=5)}
    assert float(pairs['small'][1].mean()) < m.blend.sharpen_below
    inp = load_onnx(export_onnx(m, tmp_path / f'{term}.onnx', 32), threads=1)
    assert json.loads(inp.meta['blend'])[term] == blend_kw[term]
    for p in probes:
        setattr(m.blend, term, blend_kw[term])
        assert parity(m, inp, *pairs[p]) <= PARITY_TOL
        with torch.no_grad():
            on = m(*pairs[p])['out']; setattr(m.blend, term, 0.0); off = m(*pairs[p])['out']
        assert float((on - off).abs().max()) > 1e-3                   # the probe takes the term's branch...
        assert float((inp(*pairs[p])['out'] - off).abs().max()) > 1e-3  # ... and the exported graph has it

def test_dynamic_batch_and_wrong_size(tmp_path):
    m = seeded_model(TINY_CFG)
    inp = load_onnx(export_onnx(m, tmp_path / 'b1.onnx', 32), threads=1)   # traced with batch 1
    x, k = probe_pair(32, batch=2, seed=3)
    out = inp(x, k)['out']
    assert out.shape == (2, 3, 32, 32)
    with torch.no_grad(): ref = m(x, k)['out']
    assert float((out - ref).abs().max()) <= PARITY_TOL
    with pytest.raises(ValueError, match=r'exported for 32 x 32 images, got 64 x 64.*--dynamic-size'):
        inp(*probe_pair(64))


@pytest.mark.parametrize('prefill', ['pullpush', 'harmonic_input', 'biharmonic_input'])
def test_dynamic_size_prefill(prefill, tmp_path):
    m = seeded_model(replace(TINY_CFG, coarse_prefill=prefill, coarse_norm='none', fine_residual=True))
    inp = load_onnx(export_onnx(m, tmp_path / 'dyn.onnx', 32, dynamic_size=True), threads=1)
    for s in (16, 32, 64):
        assert parity(m, inp, *probe_pair(s, seed=s)) <= PARITY_TOL, s


def _tiny_release(folder: Path) -> Path:
    from twostage.release import export_release
    from twostage.core import atomic_save
    m = seeded_model(TINY_CFG)
    ck = folder / 'last.pt'
    atomic_save({'stage': 'fine', 'model': m.state_dict(), 'model_cfg': TINY_CFG.to_dict(), 'train_cfg': {'size': 32}}, ck)
    export_release(ck, folder=folder)
    return ck


def test_cli_release_overwrite_and_checkpoint(tmp_path, capsys):
    ck = _tiny_release(tmp_path)
    out = tmp_path / 'release.onnx'
    assert main(['--onnx', str(out), '--release-dir', str(tmp_path)]) == 0
    so = capsys.readouterr().out
    assert out.exists() and str(out) in so and '32 x 32' in so and 'max abs diff' in so, so
    d = float(so.split('max abs diff')[1].split()[0])
    assert d <= PARITY_TOL
    before = out.read_bytes()
    with pytest.raises(SystemExit) as e: main(['--onnx', str(out), '--release-dir', str(tmp_path)])
    assert e.value.code == 2
    assert 'pass --overwrite' in capsys.readouterr().err
    assert out.read_bytes() == before
    with pytest.raises(SystemExit) as e: main(['--onnx', str(tmp_path / 'x.onnx'), '--checkpoint', str(tmp_path / 'missing.pt')])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"twostage-export: error: checkpoint not found: {tmp_path / 'missing.pt'}"], err
    assert not (tmp_path / 'x.onnx').exists()
    # a trainer checkpoint, at another size, coarse stage only
    assert main(['--onnx', str(tmp_path / 'c.onnx'), '--checkpoint', str(ck), '--size', '64', '--stage', 'coarse']) == 0
    inp = load_onnx(tmp_path / 'c.onnx')
    assert (inp.size, inp.stage, inp.model_cfg) == (64, 'coarse', TINY_CFG)
    assert inp.meta['cg_loop'] == 'true'   # the default: the fills' CG steps as an ONNX Loop; --unroll unrolls them
    assert main(['--onnx', str(tmp_path / 'u.onnx'), '--checkpoint', str(ck), '--unroll']) == 0
    assert load_onnx(tmp_path / 'u.onnx').meta['cg_loop'] == 'false'


def test_cli_missing_release_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: main(['--onnx', str(tmp_path / 'r.onnx'), '--release-dir', str(tmp_path / 'empty')])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'released weights' in err[0] and 'missing' in err[0] and '--checkpoint' in err[0], err


def test_console_script_and_no_training_code(tmp_path):
    _tiny_release(tmp_path)
    exe = shutil.which('twostage-export', path=str(Path(sys.executable).parent))
    assert exe, "the twostage-export console script is not installed (pip install -e .)"
    r = subprocess.run([exe, '--onnx', str(tmp_path / 'r.onnx'), '--release-dir', str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / 'r.onnx').exists(), r.stderr[-800:]
    code = ("import sys; import twostage.export;"
            "bad = [k for k in sys.modules if k in ('twostage.train', 'twostage.experiments', 'twostage.reproduce')];"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]


def test_inpaint_backend_onnxruntime_matches_torch(tmp_path, monkeypatch):
    "twostage-inpaint --backend onnxruntime fills the same hole as the torch backend (the model exported on the fly, its temporary folder deleted)."
    import tempfile
    import numpy as np
    from PIL import Image
    from twostage.train import tiny_checkpoint
    from twostage.commands import inpaint_main
    (tmp_path / 'tmp').mkdir(); monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'tmp'))   # where the export goes
    ck = tiny_checkpoint(tmp_path / 'tiny.pt', size=32)
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / 'p.png')
    m = np.zeros((48, 64), np.uint8); m[10:30, 20:40] = 255; Image.fromarray(m).save(tmp_path / 'm.png')
    outs = {}
    for b in ('torch', 'onnxruntime'):
        code = inpaint_main(['--checkpoint', str(ck), '--image', str(tmp_path / 'p.png'), '--mask', str(tmp_path / 'm.png'),
                             '--out', str(tmp_path / f'{b}.png'), '--backend', b])
        assert code == 0
        outs[b] = np.asarray(Image.open(tmp_path / f'{b}.png')).astype(int)
    assert np.abs(outs['torch'] - outs['onnxruntime']).max() <= 1   # 8-bit rounding at most
    assert (outs['torch'][10:30, 20:40] != np.asarray(Image.open(tmp_path / 'p.png'))[10:30, 20:40]).any()
    assert list((tmp_path / 'tmp').iterdir()) == []     # the exported file is gone (the session holds the model), no folder left


def _inpaint(argv, capsys):
    "(exit status, stderr lines) of twostage-inpaint; never a traceback."
    from conftest import run_cli
    from twostage.commands import inpaint_main
    return run_cli(inpaint_main, argv, capsys)


@pytest.fixture
def onnx_ws(tmp_path):
    "A photo, its mask, and 32 px ONNX files of a tiny model: without and with an edge blend, and of stage 1 alone."
    import numpy as np
    from PIL import Image
    from twostage.models.blend import EdgeBlend
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / 'p.png')
    m = np.zeros((48, 64), np.uint8); m[10:30, 20:40] = 255; Image.fromarray(m).save(tmp_path / 'm.png')
    model = seeded_model(TINY_CFG)
    export_onnx(model, tmp_path / 'plain.onnx', 32); export_onnx(model, tmp_path / 'coarse.onnx', 32, stage='coarse')
    model.blend = EdgeBlend(near=1.0, far=0.25, tau=2.0); export_onnx(model, tmp_path / 'blend.onnx', 32)
    return tmp_path


def test_inpaint_onnx_file_is_the_model(onnx_ws, capsys):
    "--onnx implies onnxruntime, and stderr names the file and its metadata, not the shipped release model."
    d = onnx_ws
    code, err = _inpaint(['--onnx', d / 'plain.onnx', '--image', d / 'p.png', '--mask', d / 'm.png', '--out', d / 'o.png'], capsys)
    assert code == 0 and (d / 'o.png').exists(), err
    assert err[0].startswith(f"twostage-inpaint: running {d / 'plain.onnx'} in onnxruntime (its metadata: 32 px, stage both, "
                             "no edge blend, exported by twostage "), err
    assert not any('release' in l for l in err), err
    code, err = _inpaint(['--onnx', d / 'blend.onnx', '--image', d / 'p.png', '--mask', d / 'm.png', '--out', d / 'b.png'], capsys)
    assert code == 0 and 'with an edge blend' in err[0], err
    code, err = _inpaint(['--onnx', d / 'coarse.onnx', '--stage', 'coarse', '--image', d / 'p.png', '--mask', d / 'm.png',
                          '--out', d / 'c.png'], capsys)
    assert code == 0 and 'stage coarse' in err[0], err     # the stage the file holds


@pytest.mark.parametrize('extra, says', [
    (['--onnx', 'missing.onnx'], '--onnx {d}/missing.onnx: no such file'),
    (['--onnx', 'plain.onnx', '--backend', 'torch'], 'runs in onnxruntime, not --backend torch'),
    (['--onnx', 'plain.onnx', '--checkpoint', 'plain.onnx'], 'is the model to run, so --checkpoint'),
    (['--onnx', 'blend.onnx', '--no-blend'], '--no-blend, but {d}/blend.onnx has the edge blend built in'),
    (['--onnx', 'plain.onnx', '--stage', 'coarse'], "--stage coarse, but {d}/plain.onnx holds stage 'both'"),
    (['--onnx', 'plain.onnx', '--size', '64'], '--size 64, but {d}/plain.onnx was exported for 32 x 32 images'),
    (['--onnx', 'p.png'], '{d}/p.png is not an ONNX model onnxruntime can load ('),
])
def test_inpaint_onnx_contradictions_are_refused(onnx_ws, capsys, extra, says):
    "A missing or unreadable --onnx file, or a flag its metadata contradicts: one line, exit status 2, nothing written."
    d = onnx_ws
    extra = [str(d / x) if x.endswith(('.onnx', '.png')) else x for x in extra]
    code, err = _inpaint(['--image', d / 'p.png', '--mask', d / 'm.png', '--out', d / 'o.png', *extra], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith('twostage-inpaint: error: ') and says.format(d=d) in err[0], err
    assert not (d / 'o.png').exists()
