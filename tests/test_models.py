"""Cross-module tests of the twostage models: presets, shapes, gradients, layouts, configs (fast: well under a minute).

Set TWOSTAGE_SLOW=1 to also run the paper-size model at 256 px.
"""
import json, os
from dataclasses import replace
import pytest
import torch
from torch import nn
from twostage.core import seed_everything
from twostage.attention import ATTENTION, attention_maps
from twostage.models.twostage import (ModelCfg, PAPER_CFG, LITE_CFG, TwoStage, build_model, build_discriminators,
                                      count_params, param_counts)
from twostage.models.discriminators import RelativisticDiscriminator

torch.set_num_threads(1)
SLOW = bool(os.environ.get('TWOSTAGE_SLOW'))
TINY = replace(LITE_CFG, coarse_base=8, fine_base=8, disc_base=8)


def batch(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(b, 1, size, size)
    mask[..., size // 4:size // 2, size // 4:3 * size // 4] = 1
    return image, mask


# ---- presets: pinned parameter counts (compute once, pin; a change here is a model change)
def test_pinned_param_counts():
    assert param_counts(PAPER_CFG) == {'coarse': 20_476_455, 'fine': 14_505_167,
                                       'D global': 2_761_153, 'D local': 2_761_153, 'D fine': 2_761_153}
    assert param_counts(LITE_CFG) == {'coarse': 987_575, 'fine': 576_905,
                                      'D global': 42_417, 'D local': 42_417, 'D fine': 42_417}


def test_presets_shape():
    assert (PAPER_CFG.coarse_base, PAPER_CFG.fine_base, PAPER_CFG.disc_base) == (64, 64, 64)
    assert 256 // 2 ** PAPER_CFG.coarse_depth == 16          # 256 px -> 16 x 16 bottleneck
    assert LITE_CFG.multiple == PAPER_CFG.multiple == 16


# ---- shapes at 64, 128, 256
@pytest.mark.parametrize('size', [64, 128, 256])
def test_shapes_lite(size):
    model, discs = build_model(LITE_CFG).eval(), build_discriminators(LITE_CFG).eval()
    image, mask = batch(1, size)
    with torch.no_grad():
        r = model(image, mask)
        for k in ('masked', 'coarse', 'coarse_out', 'fine', 'out'): assert r[k].shape == image.shape, k
        assert r['out'].abs().max() <= 1
        h = size // 2 ** LITE_CFG.disc_layers
        assert discs['global'](r['out']).shape == (1, 1, h, h)
        assert discs['local'](r['out'], mask).shape == (1, 1, h // 2, h // 2)
        rr, fr = discs['fine'](image, r['out'])
        assert rr.shape == fr.shape == (1, 1, h, h)


@pytest.mark.parametrize('size', [64, pytest.param(256, marks=pytest.mark.skipif(not SLOW, reason='set TWOSTAGE_SLOW=1'))])
def test_shapes_paper(size):
    model = build_model(PAPER_CFG).eval()
    image, mask = batch(1, size)
    with torch.no_grad(): r = model(image, mask)
    assert r['out'].shape == image.shape and r['fine'].shape == image.shape


@pytest.mark.parametrize('size', [60, 72, 100])
def test_size_not_multiple(size):
    image, mask = batch(1, size)
    with pytest.raises(ValueError, match='multiple of 16'): build_model(TINY)(image, mask)


# ---- gradients reach every parameter of both generators and both discriminator sets
def _check_grads(module, what, allow_zero=()):
    missing = [n for n, p in module.named_parameters() if p.grad is None]
    assert not missing, f"{what}: no gradient for {missing[:5]}"
    bad = [n for n, p in module.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"{what}: non-finite gradient in {bad[:5]}"
    zero = [n for n, p in module.named_parameters() if p.grad.abs().sum() == 0 and n not in allow_zero]
    assert not zero, f"{what}: zero gradient for {zero[:5]}"


@pytest.mark.parametrize('attention', ['cbam', 'self'])
def test_gradients_reach_every_parameter(attention):
    seed_everything(0)
    cfg = replace(TINY, coarse_attention=attention, fine_attention=attention)
    model, discs = build_model(cfg).train(), build_discriminators(cfg).train()
    for n, p in model.named_parameters():        # self-attention starts as the identity (gamma = 0); open it
        if n.endswith('gamma'): nn.init.constant_(p, 0.5)
    image, mask = batch(2, 64)
    r = model(image, mask)
    # generator step: reconstruction of both stages + adversarial terms from every discriminator
    rr, fr = discs['fine'](image, r['out'])
    g_loss = (r['coarse'] - image).abs().mean() + (r['fine'] - image).abs().mean() \
        - discs['global'](r['coarse_out']).mean() - discs['local'](r['coarse_out'], mask).mean() + (rr - fr).mean()
    g_loss.backward()
    _check_grads(model.coarse, 'coarse'); _check_grads(model.fine, 'fine')
    # discriminator step on detached fakes (least-squares targets: with hinge at initialisation the head bias
    # gradients of the real and the fake term cancel exactly, which would hide nothing but fail the check)
    discs.zero_grad()
    co, out = r['coarse_out'].detach(), r['out'].detach()
    ls = lambda real, fake: ((real - 1) ** 2).mean() + (fake ** 2).mean()
    rr, fr = discs['fine'](image, out)
    loss = ls(discs['global'](image), discs['global'](co)) + ls(discs['local'](image, mask), discs['local'](co, mask)) + ls(rr, fr)
    loss.backward()
    _check_grads(discs['global'], 'D global'); _check_grads(discs['local'], 'D local')
    # a relativistic critic's outputs are differences of critic values: its last bias cancels by construction
    _check_grads(discs['fine'], 'D fine', allow_zero={'net.head.bias'})
    assert discs['fine'].net.head.bias.grad.abs().sum() < 1e-5


# ---- modes and layouts
@pytest.mark.parametrize('norm', ['batch', 'instance'])
def test_batch_of_one_train_and_eval(norm):
    model = build_model(replace(TINY, coarse_norm=norm, fine_norm=norm))
    image, mask = batch(1, 64)
    model.train()(image, mask)['out'].mean().backward()
    with torch.no_grad(): assert torch.isfinite(model.eval()(image, mask)['out']).all()


@pytest.mark.parametrize('attention', ['cbam', 'self'])
def test_channels_last_same_output(attention):
    seed_everything(1)
    model = build_model(replace(TINY, coarse_attention=attention, fine_attention=attention)).eval()
    for n, p in model.named_parameters():
        if n.endswith('gamma'): nn.init.constant_(p, 0.5)
    image, mask = batch(2, 64)
    with torch.no_grad():
        ref = model(image, mask)['out']
        cl = model.to(memory_format=torch.channels_last)(image.contiguous(memory_format=torch.channels_last),
                                                          mask.contiguous(memory_format=torch.channels_last))['out']
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)


def test_same_seed_same_output():
    outs = []
    for _ in range(2):
        seed_everything(3); model = build_model(TINY).eval()
        with torch.no_grad(): outs.append(model(*batch(2, 64))['out'])
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_known_pixels_kept():
    image, mask = batch(2, 64)
    with torch.no_grad(): r = build_model(TINY).eval()(image, mask)
    for k in ('coarse_out', 'out'): assert torch.equal(r[k] * (1 - mask), image * (1 - mask))


# ---- configs: round trip, hash, ablation rows, two models in one process
ABLATIONS = {
    'full': {}, 'no_skips': dict(coarse_skips=False), 'no_coarse_attention': dict(coarse_attention='none'),
    'self_attention': dict(coarse_attention='self', fine_attention='self'), 'no_fem': dict(fem=False),
    'not_relativistic': dict(relativistic=False), 'no_local': dict(local_disc=False),
    'no_fine_skips': dict(fine_skips=False), 'bottleneck_attention': dict(coarse_attn_at=('bottleneck',)),
}


@pytest.mark.parametrize('row', list(ABLATIONS))
def test_ablation_rows_build_and_step(row):
    cfg = replace(TINY, **ABLATIONS[row])
    assert ModelCfg.from_json(cfg.to_json()) == cfg
    model, discs = build_model(cfg), build_discriminators(cfg)
    image, mask = batch(2, 64)
    r = model(image, mask)
    if isinstance(discs['fine'], RelativisticDiscriminator):
        real_rel, fake_rel = discs['fine'](image, r['out']); adv = (real_rel - fake_rel).mean()
    else: adv = -discs['fine'](r['out']).mean()
    loss = (r['out'] - image).abs().mean() + adv
    loss.backward()
    assert torch.isfinite(loss)
    assert ('local' in discs) == cfg.local_disc


def test_config_hash_and_json():
    assert PAPER_CFG.hash() == '6367973114'
    assert len({replace(PAPER_CFG, **d).hash() for d in ABLATIONS.values()}) == len(ABLATIONS)
    d = json.loads(LITE_CFG.to_json())
    assert ModelCfg.from_dict(d) == LITE_CFG and isinstance(ModelCfg.from_dict(d).fem_scales, tuple)
    with pytest.raises(ValueError, match='valid'): ModelCfg.from_dict({**d, 'bogus': 1})
    with pytest.raises(ValueError, match="valid: 'cbam'"): ModelCfg(coarse_attention='nope')
    with pytest.raises(ValueError, match="valid: 'batch'"): ModelCfg(coarse_norm='nope')


def test_two_models_in_one_process():
    a, b = build_model(TINY), build_model(replace(TINY, fem=False, coarse_attention='self'))
    assert type(a.fine.mid[0]).__name__ == 'FEM' and type(b.fine.mid[0]).__name__ == 'PlainBlock'
    assert type(a.coarse.mid_attn).__name__ == 'CBAM' and type(b.coarse.mid_attn).__name__ == 'SelfAttention'
    assert count_params(a.fine) == count_params(b.fine)          # the FEM ablation compares modules, not size
    image, mask = batch(1, 64)
    with torch.no_grad(): assert a.eval()(image, mask)['out'].shape == b.eval()(image, mask)['out'].shape


def test_attention_maps():
    model = build_model(TINY).eval()
    maps = attention_maps(model, *batch(1, 64))
    assert 'coarse.mid_attn' in maps and 'fine.mid.0.attn' in maps
    assert all(v.shape[0] == 1 for v in maps.values())
    assert set(ATTENTION) >= {'cbam', 'self', 'channel', 'spatial', 'none'}


def test_bench_forward_runs():
    from twostage.bench import bench_forward
    assert 0 < bench_forward(TINY, 32, batch=1, n=1) < 5


def test_committed_architecture_table_is_the_code_s(tmp_path):
    "figures/architecture.md is what `save_architecture` writes for the current configurations (hashes, fields, parameter counts)."
    from pathlib import Path
    from twostage.models.twostage import save_architecture
    _, md = save_architecture(out_dir=tmp_path)
    committed = Path(__file__).resolve().parents[1] / 'figures' / 'architecture.md'
    assert md.read_text() == committed.read_text(), 'figures/architecture.md is stale: rerun save_architecture(out_dir="figures")'
