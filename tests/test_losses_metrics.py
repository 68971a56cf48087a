"Weights resolution, losses, metrics and classical peers, across modules (fast: CPU, tiny tensors)."
import math, warnings
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from twostage import weights, losses, metrics, peers
from twostage.core import composite
from twostage.losses import LossCfg, reconstruction_loss, gram
from twostage.weights import MissingWeights, resolve_backbone, VGGFeatures

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def fake_vgg_ckpt(tmp_path_factory):
    "A torchvision-format VGG16 `features` checkpoint with random weights (stands in for the real download)."
    torch.manual_seed(0)
    feats = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs['D'])
    p = tmp_path_factory.mktemp('w') / 'vgg16-397923af.pth'
    torch.save({f'features.{k}': v for k, v in feats.state_dict().items()}, p)
    return p


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    "An empty torch hub cache and no TWOSTAGE_WEIGHTS."
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv('TWOSTAGE_WEIGHTS', raising=False)
    return tmp_path


# ---------------------------------------------------------------- weights
def test_resolution_order(fake_vgg_ckpt, no_weights, monkeypatch):
    # explicit path wins
    feats, src = resolve_backbone('vgg16', path=fake_vgg_ckpt)
    assert src == f'path:{fake_vgg_ckpt}' and not any(p.requires_grad for p in feats.parameters())
    # empty cache is skipped, env folder is used
    monkeypatch.setenv('TWOSTAGE_WEIGHTS', str(fake_vgg_ckpt.parent))
    assert resolve_backbone('vgg16')[1].startswith('env:TWOSTAGE_WEIGHTS:')
    # the hub cache comes before the env folder
    cache = no_weights / 'torch' / 'hub' / 'checkpoints'; cache.mkdir(parents=True)
    (cache / fake_vgg_ckpt.name).symlink_to(fake_vgg_ckpt)
    assert resolve_backbone('vgg16')[1].startswith('torch-hub-cache:')


def test_missing_weights_message(no_weights, monkeypatch):
    monkeypatch.setattr(weights, 'bundled_checkpoint', lambda name: None)
    with pytest.raises(MissingWeights) as e:
        resolve_backbone('vgg16')
    msg = str(e.value)
    assert 'https://download.pytorch.org/models/vgg16-397923af.pth' in msg
    assert str(no_weights / 'torch' / 'hub' / 'checkpoints' / 'vgg16-397923af.pth') in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(MissingWeights, match='alexnet-owt-7be5be79.pth'):
        resolve_backbone('alexnet', bundled=False)


def test_bundled_trunk_is_labelled(no_weights):
    if weights.bundled_checkpoint('vgg16') is None: pytest.skip('stlpips_pytorch bundle not installed')
    with pytest.warns(UserWarning, match='BAPPS'):
        feats, src = resolve_backbone('vgg16')
    assert src.startswith('stlpips-bundled:') and 'not ImageNet' in src


def test_vgg_features(fake_vgg_ckpt):
    vgg = VGGFeatures(layers=('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3'), path=fake_vgg_ckpt)
    assert vgg.source.startswith('path:')
    fs = vgg(torch.zeros(2, 3, 32, 32))
    assert [tuple(f.shape) for f in fs] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]
    vgg.train(); assert not vgg.training
    # ImageNet normalisation of [-1, 1] input: x -> ((x + 1) / 2 - mean) / std before the first layer
    one = VGGFeatures(layers=('relu1_2',), path=fake_vgg_ckpt)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1); std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = one.features(((x + 1) / 2 - mean) / std)
    assert torch.allclose(one(x)[0], ref, atol=1e-6)
    assert not torch.allclose(one(x)[0], one.features(x), atol=1e-3)   # the raw [-1, 1] input would differ


# ---------------------------------------------------------------- losses
def test_l1_known_values_and_weights():
    image = torch.zeros(1, 3, 2, 2); mask = torch.zeros(1, 1, 2, 2); mask[..., 0, 0] = 1
    pred = torch.full_like(image, 0.5); pred[..., 0, 0] = 1.
    total, t = reconstruction_loss(pred, image, mask, LossCfg(perceptual=0, style=0))
    assert math.isclose(t['hole'].item(), 0.25) and math.isclose(t['valid'].item(), 0.375)
    assert math.isclose(total.item(), 1 * 0.375 + 6 * 0.25)
    total, t = reconstruction_loss(pred, image, mask, LossCfg(valid=2, hole=0, perceptual=0, style=0))
    assert set(t) == {'valid'} and math.isclose(total.item(), 0.75)


def test_gram_known():
    f = torch.arange(4.).view(1, 1, 2, 2)       # C=1: gram = sum f^2 / (1*2*2)
    assert torch.allclose(gram(f), torch.tensor([[[14. / 4]]]))


def test_vgg_needed_only_when_weighted():
    x = torch.rand(1, 3, 8, 8) * 2 - 1; m = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match='VGGFeatures'):
        reconstruction_loss(x, x, m, LossCfg(perceptual=0.05, style=0))
    with pytest.raises(ValueError, match='VGGFeatures'):
        reconstruction_loss(x, x, m, LossCfg(perceptual=0, style=1))
    reconstruction_loss(x, x, m, LossCfg(perceptual=0, style=0))     # fine without


def test_full_loss_with_vgg(fake_vgg_ckpt):
    vgg = VGGFeatures(path=fake_vgg_ckpt)
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32); mask[:, :, 8:20, 8:20] = 1
    total, t = reconstruction_loss(image.clone(), image, mask, LossCfg(), vgg=vgg)
    assert set(t) == {'valid', 'hole', 'perceptual', 'style'}
    assert all(abs(v.item()) < 1e-6 for v in t.values()) and abs(total.item()) < 1e-6   # perfect prediction
    gen = nn.Conv2d(3, 3, 3, padding=1)
    pred = torch.tanh(gen(image * (1 - mask)))
    total, t = reconstruction_loss(pred, image, mask, LossCfg(), vgg=vgg)
    total.backward()
    assert all(torch.isfinite(v) and v > 0 for v in t.values())
    assert gen.weight.grad is not None and gen.weight.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in vgg.parameters())                          # VGG stays frozen


@pytest.mark.parametrize('kind', losses.GAN_KINDS)
def test_adversarial(kind):
    good_r, good_f = {'hinge': (1., -1.), 'lsgan': (1., 0.), 'ns': (10., -10.)}[kind]
    assert losses.adversarial_d_loss(torch.full((4,), good_r), torch.full((4,), good_f), kind) < 1e-3
    assert losses.adversarial_d_loss(torch.zeros(4), torch.zeros(4), kind) > 0.5
    d = torch.zeros(2, 1, 4, 4, requires_grad=True)
    losses.adversarial_g_loss(d, kind).backward(); assert d.grad.abs().sum() > 0
    fake = torch.zeros(3, requires_grad=True); real = torch.tensor([0.5, 1., 2.])
    losses.relativistic_g_loss(real - fake.mean(), fake - real.mean(), kind).backward()
    assert fake.grad.abs().sum() > 0
    assert losses.relativistic_d_loss(torch.zeros(3), torch.zeros(3), kind) > 0


def test_hinge_known():
    assert math.isclose(losses.adversarial_d_loss(torch.tensor([0.5]), torch.tensor([-0.5]), 'hinge').item(), 1.0)
    assert math.isclose(losses.adversarial_g_loss(torch.tensor([2.0]), 'hinge').item(), -2.0)
    with pytest.raises(ValueError, match='hinge'):
        losses.adversarial_d_loss(torch.zeros(1), torch.zeros(1), 'wgan')


# ---------------------------------------------------------------- metrics
@pytest.fixture(scope='module')
def faces():
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.avg_pool2d(torch.rand(3, 3, 36, 36, generator=g), 5, 1) * 2 - 1  # smooth-ish images
    m = torch.zeros(3, 1, 32, 32); m[:, :, 8:24, 6:20] = 1
    return x, m, g


def test_pixel_metrics(faces):
    x, m, g = faces
    assert (metrics.psnr(x, x) == 100).all() and np.isinf(metrics.psnr(x, x, max_db=None)).all()
    assert np.allclose(metrics.ssim(x, x), 1)
    y = torch.zeros(1, 3, 8, 8); z = torch.full((1, 3, 8, 8), 0.2)   # MSE in [0,1] = 0.01 -> 20 dB
    assert np.allclose(metrics.psnr(z, y), 20.0)
    n1 = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    n2 = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert (metrics.psnr(n2, x) < metrics.psnr(n1, x)).all() and (metrics.ssim(n2, x) < metrics.ssim(n1, x)).all()
    damaged_valid = composite(x, -x, m)                 # hole exact, every valid pixel wrong
    assert (metrics.hole_psnr(damaged_valid, x, m) == 100).all() and (metrics.hole_l1(damaged_valid, x, m) == 0).all()
    assert (metrics.psnr(damaged_valid, x) < 30).all()   # while the whole image is wrong


def test_perceptual_fallback_and_strict(faces, no_weights):
    x, m, g = faces
    with pytest.warns(UserWarning, match='NOT the published LPIPS'):
        pm = metrics.build_perceptual_metric('alex', device='cpu')
    assert pm.name == 'stlpips_alex'
    n1 = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    n2 = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert torch.allclose(pm(x, x), torch.zeros(3), atol=1e-6)
    assert (pm(n2, x) > pm(n1, x)).all()
    with pytest.raises(MissingWeights):
        metrics.build_perceptual_metric('alex', strict=True)
    r = metrics.image_metrics(n1, x, m, pm)
    assert list(r) == ['psnr', 'ssim', 'hole_psnr', 'hole_l1', 'stlpips_alex']
    assert all(isinstance(v, np.ndarray) and v.shape == (3,) for v in r.values())


def test_official_lpips_loads_given_trunk(tmp_path):
    feats = torchvision.models.AlexNet().features
    torch.save({f'features.{k}': v for k, v in feats.state_dict().items()}, tmp_path / 'alex.pth')
    pm = metrics.build_perceptual_metric('alex', path=tmp_path / 'alex.pth', device='cpu')
    assert pm.name == 'lpips_alex' and pm.source == f"path:{tmp_path / 'alex.pth'}"
    assert torch.equal(getattr(pm.net.net.slice5, '10').weight, feats[10].weight.detach())



def test_perceptual_metric_without_lpips_or_stlpips_debug_imports():
    "A machine without the lpips package, IPython or torchsummary (a bare GPU image) still gets ST-LPIPS, named as such."
    import subprocess, sys, textwrap
    code = textwrap.dedent("""
        import sys, warnings
        for name in ('lpips', 'IPython', 'torchsummary'): sys.modules[name] = None   # import of each fails
        for k in [k for k in sys.modules if k.startswith('stlpips_pytorch')]: del sys.modules[k]
        import twostage.metrics as M
        assert M._import_stlpips().LPIPS is not None
        assert 'IPython' not in sys.modules and 'torchsummary' not in sys.modules   # the stand-ins are gone again
        M.resolve_backbone = lambda *a, **k: (None, 'test')   # as if the AlexNet weights were there
        try: M._lpips_official('alex', None)
        except M.MissingWeights as e: assert 'lpips package is not installed' in str(e), e
        else: raise AssertionError('no MissingWeights without the lpips package')
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            pm = M.build_perceptual_metric('alex', device='cpu')
        assert pm.name == 'stlpips_alex' and any('NOT the published LPIPS' in str(x.message) for x in w)
        print('ok')
    """)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                       env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), (r.stdout[-2000:], r.stderr[-2000:])


# ---------------------------------------------------------------- peers
@pytest.mark.parametrize('name', list(peers.PEERS))
def test_peer(name):
    H = 24
    yy, xx = torch.meshgrid(torch.linspace(-.7, .7, H), torch.linspace(-.7, .7, H), indexing='ij')
    img = torch.stack([xx, yy, -xx])[None]
    m = torch.zeros(1, 1, H, H); m[..., 8:16, 6:18] = 1
    out = peers.inpaint_peer(name, img, m)
    hole = m.bool().expand_as(img)
    assert torch.equal(out[~hole], img[~hole]) and torch.isfinite(out).all()
    assert torch.equal(peers.inpaint_peer(name, img, torch.zeros_like(m)), img)
    assert torch.equal(peers.inpaint_peer(name, img, torch.ones_like(m)), torch.zeros_like(img))
    mean_out = peers.inpaint_peer('mean_fill', img, m)
    if name in ('telea', 'navier_stokes', 'biharmonic'):
        assert metrics.hole_psnr(out, img, m)[0] > metrics.hole_psnr(mean_out, img, m)[0] + 6
