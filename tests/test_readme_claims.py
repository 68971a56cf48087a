"The README's verdicts on the paper's claims are the committed ones (figures/*_claims.csv, stage2_study_cpu.csv), never edited by hand."
import re
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
VERDICT_ROW = re.compile(r'^\| (.+?) \| (psnr|ssim|\w*lpips\w*) \| .*\| (supported|contradicted|not resolved at this scale) \|$', re.M)


def committed_verdicts() -> dict:
    out = {}
    for name in ('table6_claims.csv', 'stage1_claims.csv', 'stage2_study_cpu.csv', 'stage2_long_cpu.csv'):
        p = ROOT / 'figures' / name
        if p.exists(): out.update({(r.row, r.metric): r.verdict for r in pd.read_csv(p).itertuples()})
    return out


def test_readme_verdicts_are_the_committed_ones():
    want = committed_verdicts()
    if not want: pytest.skip('no committed claims yet (make reproduce writes figures/table6_claims.csv)')
    got = {(r, m): v for r, m, v in VERDICT_ROW.findall((ROOT / 'README.md').read_text())}
    assert got, 'the README shows no verdict table'
    wrong = {k: (v, want.get(k)) for k, v in got.items() if want.get(k) != v}
    assert not wrong, f'README verdicts that differ from figures/*_claims.csv (README, committed): {wrong}'
    t6 = pd.read_csv(ROOT / 'figures' / 'table6_claims.csv')
    missing = [r for r in t6[t6.metric == 'psnr'].row if (r, 'psnr') not in got]
    assert not missing, f'Table 6 rows without their PSNR verdict in the README: {missing}'


def test_the_pattern_reads_a_claims_table():
    from twostage.tables import claims_md
    c = pd.DataFrame([{'name': 'a', 'row': '1: x', 'metric': 'psnr', 'ours': 25., 'diff': -.5, 'diff_lo': -.7, 'diff_hi': -.3,
                       'noise_floor': .2, 'paper_diff': -2., 'verdict': 'supported'},
                      {'name': 'a', 'row': '1: x', 'metric': 'stlpips_alex', 'ours': .05, 'diff': .001, 'diff_lo': -.01,
                       'diff_hi': .01, 'noise_floor': float('nan'), 'paper_diff': .01, 'verdict': 'not resolved at this scale'}])
    assert VERDICT_ROW.findall(claims_md(c, 't')) == [('1: x', 'psnr', 'supported'), ('1: x', 'stlpips_alex', 'not resolved at this scale')]


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = text.find('\n## ', start + len(heading))
    return text[start: nxt if nxt >= 0 else len(text)]


def test_readme_release_tables_are_the_committed_ones():
    "The shipped model's tables in the README are rows of figures/release/peers_by_family.md, written from its results."
    p = ROOT / 'figures' / 'release' / 'peers_by_family.md'
    if not p.exists(): pytest.skip('no release results yet (make release writes figures/release/)')
    want = set(p.read_text().splitlines())
    rows = [l for l in _section((ROOT / 'README.md').read_text(), '## The shipped model').splitlines()
            if l.startswith(('| twostage (release', '| biharmonic |', '| Navier-Stokes |', '| Telea |', '| mean fill |'))]
    assert len(rows) >= 10, 'the README shows no release table (all faces and eyeglasses, five methods each)'
    wrong = [l for l in rows if l not in want]
    assert not wrong, f'README release rows that are not in {p.name}: {wrong}'


def test_readme_findings_are_the_committed_ones():
    "The README's reading of the cpu run is figures/findings.md (written by `twostage.tables.findings_md`), bullet for bullet."
    p = ROOT / 'figures' / 'findings.md'
    if not p.exists(): pytest.skip('no committed findings yet (make reproduce writes figures/findings.md)')
    want = [l for l in p.read_text().splitlines() if l.strip()]
    assert want, f'{p.name} is empty'
    lines = set((ROOT / 'README.md').read_text().splitlines())
    missing = [l for l in want if l not in lines]
    assert not missing, f'findings.md bullets not in the README (regenerate the README from the committed files): {missing}'


def test_readme_release_tables_appear_once_each():
    "Each release table row is shown once: a table pasted twice (as the eyeglasses table once was, under the all-faces heading) fails."
    rows = [l for l in _section((ROOT / 'README.md').read_text(), '## The shipped model').splitlines() if l.startswith('| twostage (release')]
    dup = sorted({l for l in rows if rows.count(l) > 1})
    assert not dup, f'release rows shown more than once in the README: {dup}'


def test_readme_margin_counts_are_the_committed_ones():
    "The README's counts of resolved wins and losses of the shipped output are lines of figures/release/margins.md."
    p = ROOT / 'figures' / 'release' / 'margins.md'
    if not p.exists(): pytest.skip('no release margins yet (a release run writes figures/release/margins.md)')
    want = {l.strip() for l in p.read_text().splitlines() if l.startswith('Verdicts')}
    got = [l.strip('> ').strip() for l in _section((ROOT / 'README.md').read_text(), '## The shipped model').splitlines()
           if l.strip('> ').startswith('Verdicts')]
    assert got, 'the README quotes no verdict counts of figures/release/margins.md'
    assert set(got) <= want, f'README verdict counts that are not in {p.name}: {sorted(set(got) - want)}'


def test_readme_names_the_shipped_weights_and_their_fine_tune():
    "The sha256 the README gives is the shipped file's, and a fine-tuned release says so: what it started from and how long it took."
    import json
    rec = json.loads((ROOT / 'twostage' / 'assets' / 'release128.json').read_text())
    sec = _section((ROOT / 'README.md').read_text(), '## The shipped model')
    shown = re.findall(r'\| sha256 \| `([0-9a-f]{16})\.\.\.`', sec)
    assert shown == [rec['sha256'][:16]], (shown, rec['sha256'][:16])
    if ft := rec['card'].get('finetune'):
        assert f"`{ft['from_sha256'][:16]}...`" in sec, 'the README does not name the weights the fine-tune started from'
        assert f"{ft['recipe']['steps']:,} joint steps" in sec and f"{ft['seconds'] / 60:.1f} min" in sec


def test_replication_is_rebuilt_from_the_two_runs(tmp_path):
    "figures/rerun_zen4/replication.* come from the two runs' claims files, and the README quotes their summary lines."
    import shutil
    from twostage.tables import replication, replication_summary, write_replication
    rerun = ROOT / 'figures' / 'rerun_zen4'
    if not (rerun / 'table6_claims.csv').exists(): pytest.skip('no second run committed')
    for f in ('table6_claims.csv', 'stage1_claims.csv'): shutil.copy(rerun / f, tmp_path / f)
    w = write_replication(ROOT / 'figures', tmp_path, ('committed (AVX2)', 'rerun (AVX512)'))
    assert w['md'].read_text() == (rerun / 'replication.md').read_text()
    pd.testing.assert_frame_equal(pd.read_csv(w['csv']), pd.read_csv(rerun / 'replication.csv'))
    readme = ' '.join((ROOT / 'README.md').read_text().split())
    for f, title in (('table6_claims.csv', 'Table 6'), ('stage1_claims.csv', 'Stage 1')):
        line = replication_summary(replication(pd.read_csv(ROOT / 'figures' / f), pd.read_csv(rerun / f)))
        assert f'{title}: {line}' in readme, line


@pytest.mark.parametrize('folder', ['release_cpu', 'release_cpu_finetune', 'release_cpu_onejob'])
def test_readme_cpu_routes_quote_their_committed_runs(folder):
    "The model card's all-CPU rows quote their runs' committed results: pooled scores, sha256, verdict counts (figures/<folder>/)."
    import json
    d = ROOT / 'figures' / folder
    r = pd.read_csv(next(d.glob('results_release*.csv')))   # results_<profile>.csv
    r = r[(r.experiment == 't6_row9_blend') & (r.bucket == 'all')]
    pooled = r.groupby(['subset', 'metric']).value.mean()   # the families hold the same faces: the mean of their means
    fmt = lambda s: f"{pooled[s, 'psnr']:.2f} / {pooled[s, 'ssim']:.3f} / {pooled[s, 'stlpips_alex']:.3f}"
    sec = _section((ROOT / 'README.md').read_text(), '## The shipped model')
    assert f"pooled {fmt('all')} on all 400 test faces" in sec, (folder, fmt('all'))
    assert f"{fmt('eyeglasses')} with eyeglasses" in sec, (folder, fmt('eyeglasses'))
    card = json.loads(next(d.glob('*card.json')).read_text())
    assert f"sha256 `{card['sha256'][:16]}...`" in sec, folder
    if folder == 'release_cpu_onejob': assert card['card']['profile'] == 'release_cpu'   # run by `make release-cpu`'s own profile
    counts = re.search(r'all faces: ahead (\d+), not resolved (\d+)', (d / 'margins.md').read_text())
    if folder != 'release_cpu': assert f"all faces {counts[1]} ahead, {counts[2]} not resolved" in sec, (folder, counts.groups())


def test_readme_python_examples_run(tmp_path, monkeypatch):
    "Every python block of the README, as printed, in a folder holding the photo.jpg and mask.png they name (a real face where one is found)."
    import numpy as np
    from PIL import Image
    readme = (ROOT / 'README.md').read_text()
    blocks = re.findall(r'```python\n(.*?)```', readme, flags=re.S)
    assert blocks and any('inpaint_image' in b for b in blocks), 'the README lost its python examples'
    from twostage.core import data_dir
    try: photo = Image.open(next(p for p in sorted((data_dir() / 'img').glob('*.jpg')) if Image.open(p).size[0] >= 128)).convert('RGB')
    except (FileNotFoundError, StopIteration): photo = Image.fromarray(np.random.RandomState(0).randint(0, 256, (150, 130, 3), np.uint8))
    photo.save(tmp_path / 'photo.jpg', quality=95)
    m = np.zeros(photo.size[::-1], np.uint8); m[40:70, 30:90] = 255; Image.fromarray(m).save(tmp_path / 'mask.png')
    monkeypatch.chdir(tmp_path)
    ns = {}
    for b in blocks: exec(compile(b, 'README.md', 'exec'), ns)
    out = np.asarray(Image.open(tmp_path / 'filled.png').convert('RGB')).astype(int)
    src = np.asarray(Image.open(tmp_path / 'photo.jpg').convert('RGB')).astype(int)
    hole = m > 0
    assert (out[~hole] == src[~hole]).all() and (out[hole] != src[hole]).any()
