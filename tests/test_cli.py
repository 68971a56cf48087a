"The console scripts work end to end on a folder of images (train, evaluate, inpaint), and report user mistakes the same way."
import ast, json, os, subprocess, sys
from dataclasses import replace
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from twostage.experiments import SMOKE_SIZES, get_profile


def _entry(name: str):
    "(module, function) behind a console script, as settings.ini declares it (twostage-train has moved before)."
    import configparser, importlib
    cfg = configparser.ConfigParser(); cfg.read(Path(__file__).resolve().parents[1] / 'settings.ini')
    spec = dict(l.strip().split('=') for l in cfg['DEFAULT']['console_scripts'].split('\n') if l.strip())
    mod, fn = spec[name].split(':')
    return mod, getattr(importlib.import_module(mod), fn)


@pytest.fixture(scope='module')
def faces_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('faces')
    rng = np.random.default_rng(0)
    for i in range(24):   # any folder of images: no attribute file, mixed sizes
        s = 40 + (i % 3) * 8
        Image.fromarray(rng.integers(0, 256, (s, s + 4, 3), dtype=np.uint8)).save(d / f'face{i:03d}.png')
    return d


def test_train_from_config_file(faces_dir, tmp_path):
    _, main = _entry('twostage-train')
    spec = {'model': SMOKE_SIZES.to_dict(), 'loss': {'perceptual': 0., 'style': 0.},
            'train': {'size': 32, 'batch_size': 2, 'steps_coarse': 2, 'steps_fine': 2, 'ckpt_every': 2, 'val_every': 2,
                      'sample_every': 0, 'n_val': 2}}
    cfg = tmp_path / 'run.json'; cfg.write_text(json.dumps(spec))
    main(['--config', str(cfg), '--data', str(faces_dir), '--out', str(tmp_path / 'out'), '--device', 'cpu'])
    runs = list((tmp_path / 'out').glob('config-*/fine/last.pt'))
    assert len(runs) == 1
    assert len(pd.read_csv(runs[0].parent / 'losses.csv')) == 2


def test_train_named_experiment_then_eval_then_inpaint(faces_dir, tmp_path, capsys):
    _, train_main = _entry('twostage-train')
    from twostage.commands import eval_main, inpaint_main
    train_main(['--experiment', 'full', '--profile', 'smoke', '--data', str(faces_dir), '--out', str(tmp_path / 'runs'),
                '--device', 'cpu'])
    ck = next((tmp_path / 'runs' / 'smoke' / 'stage2').glob('*/last.pt'))
    out_csv = tmp_path / 'res.csv'
    eval_main(['--checkpoint', str(ck), '--profile', 'smoke', '--data', str(faces_dir), '--out', str(out_csv),
               '--masks', str(tmp_path / 'masks'), '--device', 'cpu'])
    res = pd.read_csv(out_csv)
    assert {'psnr', 'ssim', 'hole_psnr', 'hole_l1'} <= set(res.metric)
    from twostage.evaluate import RESULT_COLUMNS
    assert list(res.columns) == RESULT_COLUMNS                     # every row says what it measured
    assert res.stage.unique().tolist() == ['both'] and res['size'].unique().tolist() == [32]
    assert res.profile.unique().tolist() == ['smoke']
    assert res.experiment.unique().tolist() == ['full'] != [ck.parent.name]   # the run's experiment (done.json), not its hash key
    assert (res.n > 0).all() and np.isfinite(res[res.metric == 'ssim'].value).all()
    assert 'wrote' in capsys.readouterr().out
    img, mask = tmp_path / 'photo.png', tmp_path / 'mask.png'
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(img)
    m = np.zeros((50, 70), np.uint8); m[10:30, 20:40] = 255; Image.fromarray(m).save(mask)
    inpaint_main(['--checkpoint', str(ck), '--image', str(img), '--mask', str(mask), '--out', str(tmp_path / 'out.png'),
                  '--device', 'cpu'])
    out = np.asarray(Image.open(tmp_path / 'out.png'))
    assert out.shape == (50, 70, 3)
    src = np.asarray(Image.open(img))
    assert (out[m == 0] == src[m == 0]).all()     # known pixels untouched at the original size


def test_eval_of_the_shipped_model_names_the_release(faces_dir, tmp_path, monkeypatch):
    "With the default --checkpoint release, the experiment column is the release's name, not the current folder's."
    from twostage.commands import eval_main
    from twostage.release import read_release_record
    monkeypatch.chdir(tmp_path)
    assert eval_main(['--profile', 'smoke', '--data', str(faces_dir), '--masks', str(tmp_path / 'masks'), '--out', 'r.csv',
                      '--n-faces', '2', '--size', '32', '--device', 'cpu']) == 0
    assert pd.read_csv(tmp_path / 'r.csv').experiment.unique().tolist() == [read_release_record()['name']] == ['release128']


def test_console_scripts_are_installed():
    for name in ('twostage-train', 'twostage-eval', 'twostage-inpaint', 'twostage-reproduce'):
        exe = Path(sys.executable).parent / name
        assert exe.exists(), f'{name} is not installed next to {sys.executable}'
        r = subprocess.run([str(exe), '--help'], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and 'usage' in r.stdout.lower(), r.stderr[-500:]


def test_torchrun_two_processes_train_from_config(faces_dir, tmp_path):
    "The real multi-process launch path: torchrun starts 2 CPU processes (gloo); only rank 0 writes the run."
    torchrun = Path(sys.executable).parent / 'torchrun'
    if not torchrun.exists(): pytest.skip('torchrun is not installed next to this python')
    spec = {'model': replace(SMOKE_SIZES, coarse_norm='instance').to_dict(), 'loss': {'perceptual': 0., 'style': 0.},
            'train': {'size': 32, 'batch_size': 4, 'steps_coarse': 2, 'steps_fine': 2, 'ckpt_every': 2, 'val_every': 2,
                      'sample_every': 0, 'n_val': 2}}
    cfg = tmp_path / 'run.json'; cfg.write_text(json.dumps(spec))
    r = subprocess.run([str(torchrun), '--standalone', '--nproc_per_node', '2', '-m', _entry('twostage-train')[0], '--config', str(cfg),
                        '--data', str(faces_dir), '--out', str(tmp_path / 'out'), '--device', 'cpu'],
                       capture_output=True, text=True, timeout=300, env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    runs = list((tmp_path / 'out').glob('config-*'))
    assert len(runs) == 1
    log = pd.read_csv(runs[0] / 'fine' / 'losses.csv')
    assert log.step.tolist() == [0, 1]                      # written once (rank 0), not once per process
    assert r.stdout.count('"coarse"') == 1                  # only rank 0 prints the result


def test_bench_recipe_command(faces_dir, tmp_path, capsys):
    from twostage.bench import main
    out = tmp_path / 'recipe.csv'
    main(['recipe', '--profile', 'smoke', '--steps', '1', '--n-faces', '2', '--families', 'medium', '--variants', 'profile',
          'l1_no_gan', '--data', str(faces_dir), '--runs', str(tmp_path / 'runs'), '--device', 'cpu', '--csv', str(out)])
    df = pd.read_csv(out)
    assert df.variant.tolist() == ['biharmonic', 'profile', 'l1_no_gan'] and df.psnr.notna().all()
    assert 'l1_no_gan' in capsys.readouterr().out
    with pytest.raises(SystemExit): main(['recipe', '--variants', 'warp_speed'])


def test_bench_steps_command(tmp_path, capsys, monkeypatch):
    from twostage.bench import main
    out = tmp_path / 'steps.csv'
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')   # a run whose kernels were held below the CPU's level says so in its CSV
    monkeypatch.delenv('ATEN_CPU_CAPABILITY', raising=False)
    main(['steps', '--profiles', 'smoke', '--n', '1', '--warmup', '0', '--timing-vgg', '--device', 'cpu', '--csv', str(out)])
    df = pd.read_csv(out)
    assert df[['phase', 'steps', 'batch']].values.tolist() == [['stage 1', 2, 2], ['stage 2', 2, 2]]
    assert (df.sec_per_step > 0).all() and df.kernel_limits.tolist() == ['ONEDNN_MAX_CPU_ISA=AVX2'] * 2
    assert 'smoke        training steps:' in capsys.readouterr().out
    with pytest.raises(SystemExit): main(['steps', '--profiles', 'warp_speed'])


# ---------------------------------------------------------------- twostage.cli.guard

def _toy():
    from twostage.cli import guard
    from twostage.core import UserError
    @guard('toy')
    def main(argv=None):
        "Toy entry point."
        import argparse
        p = argparse.ArgumentParser(prog='toy'); p.add_argument('what'); a = p.parse_args(argv)
        if a.what == 'user':
            e = UserError('--out a.png is the input image'); e.hint = 'choose another --out'; raise e
        if a.what == 'value': raise ValueError("unknown profile 'fast'; valid: smoke, cpu, gpu")
        if a.what == 'missing': raise FileNotFoundError(2, 'No such file or directory', 'x.pt')
        if a.what == 'cuda': raise AssertionError('Torch not compiled with CUDA enabled')
        if a.what == 'unreadable':
            from twostage.data import UnreadableImage
            raise UnreadableImage('cannot read image a.jpg')
        if a.what == 'bug': raise KeyError('oops')
        if a.what == 'shape': raise RuntimeError('mat1 and mat2 shapes cannot be multiplied')
        if a.what == 'ctrl-c': raise KeyboardInterrupt
        if a.what == 'exit3': raise SystemExit(3)
        return 0
    return main


def _code(main, argv, capsys):
    try: code = main(argv)
    except SystemExit as e: code = e.code
    return code, capsys.readouterr().err


DEBUG = '(run again with --debug for the full traceback)'

@pytest.mark.parametrize('what, code, err', [
    ('ok', 0, ''),
    ('user', 2, 'toy: error: --out a.png is the input image\ntoy: choose another --out\n'),
    ('value', 2, f"toy: error: unknown profile 'fast'; valid: smoke, cpu, gpu\n{DEBUG}\n"),
    ('missing', 2, f'toy: error: No such file or directory: x.pt\n{DEBUG}\n'),
    ('cuda', 2, f'toy: error: Torch not compiled with CUDA enabled\n{DEBUG}\n'),
    ('unreadable', 2, f'toy: error: cannot read image a.jpg\n{DEBUG}\n'),
    ('ctrl-c', 130, f'toy: error: interrupted\n{DEBUG}\n'),
    ('exit3', 3, ''),
])
def test_guard_reports_user_mistakes(capsys, what, code, err):
    assert _code(_toy(), [what], capsys) == (code, err)


def test_guard_keeps_tracebacks_for_bugs_and_debug(capsys, monkeypatch):
    main = _toy()
    with pytest.raises(KeyError): main(['bug'])
    with pytest.raises(RuntimeError, match='shapes'): main(['shape'])          # not about a device: a bug
    with pytest.raises(ValueError, match='unknown profile'): main(['value', '--debug'])
    assert _code(main, ['ok', '--debug'], capsys) == (0, '')                  # --debug is removed before parsing
    code, err = _code(main, ['ok', 'extra'], capsys)                          # argparse's own errors pass through
    assert code == 2 and 'unrecognized arguments: extra' in err
    monkeypatch.setenv('TWOSTAGE_DEBUG', '1')
    with pytest.raises(ValueError): main(['value'])
    monkeypatch.delenv('TWOSTAGE_DEBUG')
    monkeypatch.setattr(sys, 'argv', ['toy', 'user'])                         # argv=None reads sys.argv[1:]
    assert _code(main, None, capsys)[0] == 2
    assert main.__name__ == 'main' and main.__doc__ == 'Toy entry point.'


def test_check_device(monkeypatch):
    from twostage.core import check_device, UserError
    check_device('cpu')
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    for dev in ('cuda', 'cuda:0'):
        with pytest.raises(UserError, match=r'^--device cuda(:0)?: this machine has no CUDA GPU \(torch.cuda.is_available\(\) is False\); use --device cpu$'):
            check_device(dev)
    monkeypatch.setattr('torch.backends.mps.is_available', lambda: False)
    with pytest.raises(UserError, match='--device mps: this machine has no MPS device'): check_device('mps')
    with pytest.raises(UserError, match='not a device name'): check_device('gpu')
    monkeypatch.setenv('TWOSTAGE_DEVICE', 'cuda')
    with pytest.raises(UserError, match='TWOSTAGE_DEVICE=cuda'): check_device(None)


def test_cli_module_is_light():
    "twostage.cli imports only sys, os and twostage.core at the top, so any module can use it without a cycle."
    import twostage.cli as cli
    tree = ast.parse(Path(cli.__file__).read_text())
    top = set()
    for n in tree.body:
        if isinstance(n, ast.Import): top |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module != '__future__': top.add('.' * n.level + (n.module or ''))
    assert top <= {'sys', 'os', '.core', 'twostage.core'}, top
    assert cli.__all__ == ['guard']
