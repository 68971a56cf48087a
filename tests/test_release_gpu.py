"The release model's GPU path, on the CPU: the pack holds the held-out faces and what the GPU machine lacks, and a run from it alone writes a release."
import json, os, subprocess, sys, textwrap
from pathlib import Path

import pytest

from twostage.data import load_faces, keep_min_side

FACES = Path(os.environ.get('TWOSTAGE_DATA') or Path(__file__).resolve().parents[1].parent / 'shared' / 'faces' / 'celeba')


@pytest.mark.skipif(not FACES.exists(), reason=f"no real faces at {FACES}")
def test_gpu_pack_runs_the_release_profile_from_the_pack_alone(tmp_path):
    from dataclasses import replace
    from twostage.reproduce import pack_for_gpu, score_peers
    from twostage.experiments import get_profile
    pack = tmp_path / 'pack'
    rec = pack_for_gpu(pack, data=FACES, max_mb=24, peers=False)   # the full protocol's peers take minutes: a small one below
    assert rec['mib'] < 40 and '--runs' in rec['command'] and rec['command'].endswith('--finetune') and 'peers' not in rec
    assert (pack / 'run.sh').read_text().splitlines()[-1] == rec['command']   # make release-gpu runs the whole recipe
    small = replace(get_profile('release_gpu'), step_cap=2, n_test=4, n_glasses=2, families=('medium',), peers=('mean_fill',),
                    eval_batch=4)
    res = score_peers(small, data=pack / 'faces', runs=pack / 'runs', progress=False)   # what pack_for_gpu does with peers=True
    assert res == pack / 'runs' / 'release_gpu' / 'results' and len(list(res.glob('peer_mean_fill-*.csv'))) == 4   # + eye frames
    prof = get_profile('release_gpu')
    src, pk = prof.faces(FACES), keep_min_side(load_faces(pack / 'faces', size=128, follow_partition=False), 128)
    assert list(pk.test['id']) == list(src.test['id']) and list(pk.glasses_test['id']) == list(src.glasses_test['id'])
    assert 0 < len(pk.train) < len(src.train)
    # a fresh python that sees the pack's copy of stlpips_pytorch (without its VGG16 file) and the small trunk only
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(pack / 'site')!r})
        import stlpips_pytorch, torch; torch.set_num_threads(1)
        assert stlpips_pytorch.__file__.startswith({str(pack)!r}), stlpips_pytorch.__file__
        from dataclasses import replace
        from twostage.weights import bundled_checkpoint, resolve_backbone
        assert bundled_checkpoint('vgg16') is None and resolve_backbone('vgg16')[1].startswith('env:TWOSTAGE_WEIGHTS')
        from twostage.experiments import get_profile
        from twostage.reproduce import reproduce
        gpu = get_profile('release_gpu')   # its protocol shrunk as above; batch 4 and fp32 (no timed check) to keep CI short
        prof = replace(gpu, step_cap=2, n_test=4, n_glasses=2, families=('medium',), peers=('mean_fill',), eval_batch=4,
                       train=replace(gpu.train, batch_size=4, n_val=4), blend_val=4)
        reproduce(prof, data={str(pack / 'faces')!r}, runs={str(pack / 'runs')!r}, figures={str(tmp_path / 'figs')!r},
                  experiments=['t6_row9'], make_figures=False, progress=False, precision='fp32', release_to={str(tmp_path / 'rel')!r})
        # the release just written, evaluated again as shipped weights: a fresh runs folder, nothing trained, the record rewritten
        import shutil; shutil.copy({str(tmp_path / 'rel' / 'release128.json')!r}, {str(tmp_path / 'trained.json')!r})
        reproduce(prof, data={str(pack / 'faces')!r}, runs={str(tmp_path / 'runs2')!r}, figures={str(tmp_path / 'figs2')!r},
                  make_figures=False, progress=False, release_to={str(tmp_path / 'rel')!r}, shipped=True)
        # --shipped --finetune: trained further (2 joint steps), written as the shipped weights, then evaluated as above
        shutil.copy({str(tmp_path / 'rel' / 'release128.json')!r}, {str(tmp_path / 'evaluated.json')!r})
        from twostage.reproduce import Finetune
        reproduce(prof, data={str(pack / 'faces')!r}, runs={str(tmp_path / 'runs3')!r}, figures={str(tmp_path / 'figs3')!r},
                  make_figures=False, progress=False, release_to={str(tmp_path / 'rel')!r}, shipped=True, precision='fp32',
                  finetune=Finetune(steps=2, batch_size=2, adv_warmup=1))
        # the whole recipe in one job (the GPU command's --finetune): row 9 trained and written, fine-tuned, then evaluated
        reproduce(prof, data={str(pack / 'faces')!r}, runs={str(tmp_path / 'runs4')!r}, figures={str(tmp_path / 'figs4')!r},
                  make_figures=False, progress=False, release_to={str(tmp_path / 'rel4')!r}, precision='fp32',
                  finetune=Finetune(steps=2, batch_size=2, adv_warmup=1))
        # run again (as after an interruption): nothing is trained again, and the same weights come out
        shutil.copy({str(tmp_path / 'rel4' / 'release128.json')!r}, {str(tmp_path / 'one.json')!r})
        reproduce(prof, data={str(pack / 'faces')!r}, runs={str(tmp_path / 'runs4')!r}, figures={str(tmp_path / 'figs4')!r},
                  make_figures=False, progress=False, release_to={str(tmp_path / 'rel4')!r}, precision='fp32',
                  finetune=Finetune(steps=2, batch_size=2, adv_warmup=1))
    """)
    env = {**os.environ, 'TWOSTAGE_WEIGHTS': str(pack / 'weights'), 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-1500:])
    assert '[peer] mean_fill: from cache' in r.stdout, r.stdout[-1500:]   # the run read the peers scored beforehand
    rel = json.loads((tmp_path / 'evaluated.json').read_text())   # the record before the fine-tune at the end
    card = rel['card']
    assert card['profile'] == 'release_gpu', card.get('profile')
    assert (tmp_path / 'rel' / 'release128.safetensors').exists()
    # the edge blend: chosen on 4 validation faces, recorded, and the card's model scores are the blended output's
    assert rel['blend']['chosen_on'].startswith('4 validation faces') and '[blend] EdgeBlend(' in r.stdout, r.stdout[-1500:]
    assert set(card['scores']['all']['medium']) >= {'twostage', 'twostage_network', 'mean_fill'}
    assert (tmp_path / 'figs' / 'blend_release_gpu.csv').exists()
    # --shipped: the same weights, evaluated without a checkpoint; how they were trained stays the record's
    from twostage.release import sha256_file
    trained = json.loads((tmp_path / 'trained.json').read_text())
    assert '[shipped] release128.safetensors' in r.stdout and 'checkpoint the shipped weights' in r.stdout, r.stdout[-1500:]
    assert not (tmp_path / 'runs2' / 'release_gpu' / 'stage1').exists() and not (tmp_path / 'runs2' / 'release_gpu' / 'stage2').exists()
    assert rel['sha256'] == trained['sha256']   # the file itself: checked when the fine-tune below read it (its from_sha256)
    for k in ('data', 'steps', 'train_seconds', 'recipe'): assert rel['card'][k] == trained['card'][k], k
    assert rel['card']['machine']['training'] == trained['card']['machine']['training']
    assert rel['card']['evaluated']['data'].endswith('faces') and 'evaluated' not in trained['card']
    import pandas as pd
    res = pd.read_csv(tmp_path / 'figs2' / 'results_release_gpu.csv')
    assert set(res[res.experiment.str.startswith('t6_row9')].config_hash) == {'shipped-' + rel['sha256'][:16]}
    assert {'t6_row9', 't6_row9_coarse', 't6_row9_blend'} <= set(res.experiment)
    # the same network's scores as the trained run's (one protocol, one file of weights): row 9 is not re-trained, only re-scored
    first = pd.read_csv(tmp_path / 'figs' / 'results_release_gpu.csv')
    pick = lambda d: d[(d.experiment == 't6_row9') & (d.bucket == 'all')].groupby(['subset', 'metric']).value.mean()
    pd.testing.assert_series_equal(pick(res), pick(first), atol=1e-4)
    # the fine-tuned weights: new sha256, their lineage in the card, evaluated under their own key, the training facts kept
    tuned, before = json.loads((tmp_path / 'rel' / 'release128.json').read_text()), rel
    assert tuned['sha256'] == sha256_file(tmp_path / 'rel' / 'release128.safetensors') != before['sha256']
    assert tuned['card']['finetune']['from_sha256'] == before['sha256'] and tuned['card']['finetune']['recipe']['steps'] == 2
    for k in ('data', 'steps', 'train_seconds', 'recipe'): assert tuned['card'][k] == trained['card'][k], k
    assert tuned['card']['machine']['training'] == trained['card']['machine']['training'] and tuned['card']['scores']
    assert tuned['blend']['chosen_on'].startswith('4 validation faces') and '[finetune] wrote release128.safetensors' in r.stdout
    assert (tmp_path / 'runs3' / 'release_gpu' / 'finetune').exists() and not (tmp_path / 'runs3' / 'release_gpu' / 'stage2').exists()
    res3 = pd.read_csv(tmp_path / 'figs3' / 'results_release_gpu.csv')
    assert set(res3[res3.experiment.str.startswith('t6_row9')].config_hash) == {'shipped-' + tuned['sha256'][:16]}
    # one job: the weights it trained are the ones it fine-tuned; the card has both, and the scores of the fine-tuned weights
    import re
    made = re.search(r"\[release\] release128.safetensors \(sha256 ([0-9a-f]{16})\.\.\.\) written from (\S+), to be fine-tuned", r.stdout)
    assert made and '/runs4/' in made[2], r.stdout[-1500:]
    assert '(2 joint steps, each counted as 1 stage-1 steps in the time estimate)' in r.stdout   # batch 2 against 4: 2 x 2 / 4
    one = json.loads((tmp_path / 'one.json').read_text())
    again = json.loads((tmp_path / 'rel4' / 'release128.json').read_text())
    assert again['sha256'] == one['sha256'] == sha256_file(tmp_path / 'rel4' / 'release128.safetensors')
    assert again['card']['finetune']['from_sha256'] == one['card']['finetune']['from_sha256']
    assert len(list((tmp_path / 'runs4' / 'release_gpu' / 'finetune').iterdir())) == 1   # one fine-tune run, found done
    assert not one['sha256'].startswith(made[1])
    assert one['card']['finetune']['from_sha256'].startswith(made[1]) and one['card']['finetune']['recipe']['steps'] == 2
    for k in ('profile', 'steps', 'recipe'): assert one['card'][k] == trained['card'][k], k
    assert set(one['card']['machine']['training']) == {'coarse', 'fine'} and one['card']['scores'] and one['blend']
    res4 = pd.read_csv(tmp_path / 'figs4' / 'results_release_gpu.csv')
    assert set(res4[res4.experiment.str.startswith('t6_row9')].config_hash) == {'shipped-' + one['sha256'][:16]}
    assert (tmp_path / 'runs4' / 'release_gpu' / 'finetune').exists()


def test_shipped_evaluation_refuses_what_it_cannot_do(tmp_path, capsys):
    from twostage.core import UserError
    from twostage.reproduce import reproduce
    with pytest.raises(UserError, match='release profile'):
        reproduce('smoke', runs=tmp_path, figures=tmp_path / 'f', shipped=True)
    with pytest.raises(UserError, match='no other row'):
        reproduce('release_gpu', runs=tmp_path, figures=tmp_path / 'f', shipped=True, experiments=['t6_row8'])
    with pytest.raises(UserError, match='no other row'):
        reproduce('release_gpu', runs=tmp_path, figures=tmp_path / 'f', shipped=True, seeds=True)
    from twostage.release import read_release_record
    other = ({'release', 'release_gpu'} - {read_release_record()['card']['profile']}).pop()   # the profile that did not make them
    with pytest.raises(UserError, match='made by profile'):
        reproduce(other, runs=tmp_path, figures=tmp_path / 'f', shipped=True)
    from twostage.reproduce import RELEASE_FINETUNE
    with pytest.raises(UserError, match='with shipped=True'):   # a release run that writes no weights has nothing to fine-tune
        reproduce('release_gpu', runs=tmp_path, figures=tmp_path / 'f', finetune=RELEASE_FINETUNE)
    with pytest.raises(UserError, match="not 'smoke'"):
        reproduce('smoke', runs=tmp_path, figures=tmp_path / 'f', finetune=RELEASE_FINETUNE, release_to=tmp_path / 'rel')
    with pytest.raises(UserError, match='row 9 only'):
        reproduce('release_gpu', runs=tmp_path, figures=tmp_path / 'f', finetune=RELEASE_FINETUNE, release_to=tmp_path / 'rel',
                  experiments=['t6_row8'])
    assert not (tmp_path / 'rel').exists()   # refused before anything was trained or written
    from twostage.reproduce import main   # the same on the command line: `prog: error: ...`, exit status 2
    with pytest.raises(SystemExit) as e: main(['--profile', 'cpu', '--finetune', '--runs', str(tmp_path)])
    assert e.value.code == 2 and "twostage-reproduce: error: finetune trains the release model further" in capsys.readouterr().err
    with pytest.raises(UserError, match='made by profile'):
        reproduce(other, runs=tmp_path, figures=tmp_path / 'f', shipped=True, finetune=RELEASE_FINETUNE)


@pytest.mark.parametrize('profile,steps', [('release_cpu', 800), ('release_gpu', 1200), ('release', 1200)])
def test_the_one_job_command_fine_tunes_with_the_profile_recipe(profile, steps, monkeypatch):
    "`twostage-reproduce --profile P --finetune` hands `reproduce` the profile's own fine-tune (release_cpu: 800 joint steps)."
    import twostage.reproduce as R
    seen = {}
    monkeypatch.setattr(R, 'reproduce', lambda *a, **k: seen.update(k, profile=a[0]))
    R.main(['--profile', profile, '--finetune'])
    assert seen['profile'] == profile and seen['finetune'] == R.profile_finetune(profile) and seen['finetune'].steps == steps
    assert seen['release_to'] == ''   # a release profile writes the shipped weights
    seen.clear(); R.main(['--profile', profile])
    assert seen['finetune'] is None
