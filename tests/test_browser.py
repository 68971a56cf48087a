"The demo as a web page, in a real browser: Voilà serves nbs/20_demo.ipynb, headless Chromium picks a face and a mask and presses Run."
import base64, io, json, os, shutil, signal, socket, subprocess, time, warnings
from importlib.util import find_spec
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

from twostage.core import repo_root, figures_dir, data_dir
from twostage.demo import voila_command, free_port, release_available, make_mask
from twostage.train import tiny_checkpoint

pytestmark = pytest.mark.slow
TIMEOUT = 180   # seconds for each wait: page and kernel start, one inpainting, on a shared CPU
INSTALL = 'apt-get install chromium chromium-driver'


def _skip(reason):
    "Skip, and say so where `make test` (pytest -q, no -rs) shows it: in the warnings summary."
    warnings.warn(f"browser test skipped: {reason}", UserWarning)
    pytest.skip(reason)


def _browser():
    "(chromium, chromedriver) paths; skips with the install command when either is missing."
    chrome = next((p for p in map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome')) if p), None)
    driver = shutil.which('chromedriver')
    if not (chrome and driver): _skip(f"no chromium/chromedriver: {INSTALL}")
    for mod in ('selenium', 'voila'):
        if find_spec(mod) is None: _skip(f'{mod} is not installed: pip install -e ".[demo]"')
    return chrome, driver


@pytest.fixture(scope='module')
def page(tmp_path_factory):
    "A Voilà server of the demo notebook on a free loopback port: (url, which weights it runs); stopped afterwards."
    chrome, driver = _browser()
    tmp = tmp_path_factory.mktemp('web')
    env = {**os.environ, 'TWOSTAGE_RUNS': str(tmp / 'runs'), 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'),
           'MKL_NUM_THREADS': os.environ.get('MKL_NUM_THREADS', '1')}
    if release_available(): weights = 'release'          # the page offers the shipped weights first
    else:                                                # the page says they are missing and offers runs/: a tiny model
        ck = tiny_checkpoint(tmp / 'runs' / 'smoke' / 'stage2' / 'tiny' / 'last.pt', size=32)
        (ck.parent / 'done.json').write_text(json.dumps({'experiment': 'full', 'stage': 'fine', 'key': 'tiny', 'steps': 1}))
        weights = 'tiny checkpoint'
    try: data_dir()                                      # the bundled CelebA faces, else random ones
    except FileNotFoundError:
        (tmp / 'faces').mkdir()
        for i in range(12): Image.fromarray(np.random.RandomState(i).randint(0, 256, (50, 40, 3), np.uint8)).save(tmp / 'faces' / f'{i}.png')
        env['TWOSTAGE_DATA'] = str(tmp / 'faces')
    port, log = free_port(), open(tmp / 'voila.log', 'w')
    proc = subprocess.Popen(voila_command(port), cwd=repo_root(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while True:                                      # wait for the port, not the page: a GET / starts a kernel
            if proc.poll() is not None: pytest.fail(f"voila exited ({proc.returncode}):\n{(tmp / 'voila.log').read_text()[-3000:]}")
            try:
                with socket.create_connection(('127.0.0.1', port), timeout=1): break
            except OSError:
                if time.monotonic() - t0 > 60: pytest.fail(f"voila did not listen on port {port} within 60 s")
                time.sleep(0.3)
        yield dict(url=f'http://127.0.0.1:{port}/', weights=weights, chrome=chrome, driver=driver, log=tmp / 'voila.log')
    finally:
        proc.send_signal(signal.SIGTERM)                 # Voilà shuts its kernels down on SIGTERM
        try: proc.wait(30)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
        log.close()


def _png(src: str) -> np.ndarray:
    "The pixels of an inline PNG (an <img>'s data: URL)."
    assert src.startswith('data:image/png;base64,'), src[:60]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(',', 1)[1]))).convert('RGB')).astype(int)


def test_demo_page_in_headless_chromium(page):
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = page['chrome']
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1280,1500'):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(page['driver']), options=opts)
    css = lambda sel: drv.find_element(By.CSS_SELECTOR, sel)
    src = lambda sel: drv.execute_script('const e = document.querySelector(arguments[0]); return e && e.src', sel)
    status = lambda: drv.execute_script("const e = document.querySelector('.twostage-status'); return e ? e.innerText : ''")

    def wait(cond, what):
        try: return WebDriverWait(drv, TIMEOUT, poll_frequency=0.25).until(lambda d: cond())
        except TimeoutException:
            pytest.fail(f"{TIMEOUT} s waiting for {what}; status: {status()!r}\n"
                        f"voila log:\n{page['log'].read_text()[-3000:]}")
    try:
        t0 = time.perf_counter()
        drv.get(page['url'])
        run = wait(lambda: drv.find_elements(By.CSS_SELECTOR, 'button.twostage-run:not([disabled])'), 'the Run button')[0]
        t_ready = time.perf_counter() - t0
        head = css('.twostage-head').text
        assert ('shipped release model' in head) if page['weights'] == 'release' else ('release weights are not installed' in head), head
        first = wait(lambda: src('.twostage-masked img[alt="masked input"]'), 'the masked input')
        assert not drv.find_elements(By.CSS_SELECTOR, '.twostage-result img'), 'a result before Run'

        # pick a face: the validation split, face #3 (typed into the slider's readout)
        Select(css('.twostage-split select')).select_by_visible_text('val')
        readout = css('.twostage-face .widget-readout')
        readout.click(); readout.send_keys(Keys.CONTROL, 'a'); readout.send_keys('3', Keys.ENTER)
        wait(lambda: '(4 of' in status(), 'face #3 of the validation split')
        face = wait(lambda: (s := src('.twostage-masked img')) and s != first and s, 'the new face')
        # pick a mask: the rectangle (its box is the default (0.3, 0.3, 0.4, 0.4) of the side)
        Select(css('.twostage-mask select')).select_by_visible_text('rectangle')
        wait(lambda: (s := src('.twostage-masked img')) and s != face, 'the rectangle mask')
        masked = _png(src('.twostage-masked img'))

        t1 = time.perf_counter()
        run.click()
        wait(lambda: drv.find_elements(By.CSS_SELECTOR, '.twostage-result img[alt="inpainted output"]'), 'the inpainted output')
        t_run, t_total = time.perf_counter() - t1, time.perf_counter() - t0
        out = _png(src('.twostage-result img'))
        assert 'PSNR' in status() and 'SSIM' in status(), status()
        assert drv.find_elements(By.CSS_SELECTOR, '.twostage-panel img'), 'no four-panel figure'

        # the output is the masked input with its hole filled: equal outside the hole, different inside it
        assert out.shape == masked.shape and out.shape[0] == out.shape[1], (out.shape, masked.shape)
        hole = make_mask('rectangle', out.shape[0])[0, 0].numpy().astype(bool)
        assert (masked[hole] == 255).all(), 'the hole of the masked input is not white'
        assert np.abs(out[~hole] - masked[~hole]).max() <= 1, 'known pixels changed'
        assert np.abs(out[hole] - masked[hole]).mean() > 5, 'the hole was not filled'
        print(f"\nbrowser test ({page['weights']}, {out.shape[0]} px): page ready {t_ready:.1f} s, Run -> result {t_run:.1f} s, "
              f"page load -> result {t_total:.1f} s")

        if os.environ.get('TWOSTAGE_SCREENSHOT'):       # refresh the README's screenshot only when asked
            drv.execute_script('window.scrollTo(0, 0)')
            drv.set_window_size(1280, min(4000, drv.execute_script('return document.body.scrollHeight') + 40))
            shot = figures_dir() / 'demo_web.png'
            assert drv.save_screenshot(str(shot)), shot
            print(f"screenshot: {shot} ({page['weights']})")
    finally:
        drv.quit()
