"""``python -m benchmark demo``: the scored estimates stored at evaluation (``demo.npz``), the
static site built from them, on ``smoke`` runs of mnist and fsdd2mix and on the Libri2Mix / FUSS
/ LibriSpeech + FUSS fixtures; and, marked ``browser``, the pages opened in headless Chromium
(Debian's ``chromium`` + ``chromium-driver`` through Selenium; never a downloaded browser).

``pytest -m "not browser"`` leaves the browser test out. Without Chromium it skips locally but
FAILS when ``CI`` is set (``.ci/run`` installs the packages). Its screenshots go to
``$BENCHMARK_DEMO_SCREENSHOTS`` (default: the test's tmp folder), never into the repository.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from audio_fixtures import make_fuss, make_libri2mix, make_librispeech
from helpers import smoke_argv

from benchmark.cli import main
from benchmark.demo import DEMO_FILE, load_demo
from benchmark.store import atomic_write_json, iter_records
from tasks.audio import AudioTask
from tasks.audio_corpora import FussTask
from tasks.audio_metrics import score_audio_mixture
from tasks.base import Task, parse_perm
from tasks.fuss_metrics import fuss_row
from tasks.image_metrics import image_separation_scores

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: a task page's size limit for N = 8 (HTML + its PNG/WAV files)
PAGE_LIMIT_BYTES = 5_000_000
MNIST_METHODS = "mixit,supervised,remixit"
FSDD_METHODS = "mixit,supervised"


# ------------------------------------------------------------------------------ helpers


class _Page(HTMLParser):
    """The parts of a demo page the tests read: grid headings, media sources, links."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.images: list[str] = []
        self.audio: list[tuple[str, float]] = []
        self.links: list[str] = []
        self._in_grid_th = False
        self._grid = False
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("class") == "grid":
            self._grid = True
        if tag == "th" and self._grid:
            self._in_grid_th, self._text = True, []
        if tag == "img":
            self.images.append(a["src"])
        if tag == "audio":
            self.audio.append((a["src"], float(a["data-duration"])))
        if tag in ("a", "link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))

    def handle_endtag(self, tag):
        if tag == "th" and self._in_grid_th:
            self.headers.append(" ".join("".join(self._text).split()))
            self._in_grid_th = False
        if tag == "thead":
            self._grid = False

    def handle_data(self, data):
        if self._in_grid_th:
            self._text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _demo(results: Path, out: Path, *args: str) -> int:
    return main(["demo", "--results-dir", str(results), "--out", str(out), *args])


def _check_files(site: Path, page_file: Path, rate: int | None = None) -> _Page:
    """Every referenced file exists under the site; WAVs are 16-bit at ``rate`` with the
    stated duration; nothing is fetched from elsewhere."""
    page = _parse(page_file)
    text = page_file.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "a reference leaves file://"
    for src in page.images:
        assert (site / src).is_file(), src
    for src, duration in page.audio:
        info = sf.info(str(site / src))
        assert info.subtype == "PCM_16" and info.format == "WAV" and info.channels == 1
        if rate is not None:
            assert info.samplerate == rate, (src, info.samplerate)
        assert abs(info.frames / info.samplerate - duration) < 1e-6, (src, info.duration)
    return page


def _record(results: Path, task: str, method: str):
    return next(r for r in iter_records(results) if r.task == task and r.method == method)


def _size(page_file: Path) -> int:
    assets = page_file.with_name(page_file.stem + "_files")
    return page_file.stat().st_size + sum(f.stat().st_size for f in assets.iterdir())


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, data_root) -> Path:
    """``smoke`` runs (debug executor) of a few methods on mnist and fsdd2mix (plus the
    ``mixture`` reference each ``run`` adds)."""
    results = tmp_path_factory.mktemp("demo_runs") / "results"
    for task, methods in (("mnist", MNIST_METHODS), ("fsdd2mix", FSDD_METHODS)):
        argv = smoke_argv(results, data_root, "--methods", methods, "--task", task)
        assert main([*argv, "--executor", "debug"]) == 0
    return results


# ------------------------------------------------------------------ stored estimates


def test_estimate_order_reads_each_tasks_perm_convention():
    """The estimate put under target j is the one the scores matched to source j: image,
    speech and FUSS scores all write the one convention (estimate k -> source perm[k],
    methods.pit.best_permutation), checked with a 3- and a 4-cycle (not their own inverse)."""
    rng = np.random.default_rng(0)
    sources = torch.rand(1, 3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cycle = [1, 2, 0]
    estimates = (sources[:, cycle] + 0.01 * torch.randn(1, 3, 1, 8, 8)).clamp(0, 1)
    perm = image_separation_scores(estimates, sources)["perm"][0]
    assert perm == "1,2,0"
    order = Task.estimate_order(perm)
    assert torch.allclose(estimates[0, order], sources[0], atol=0.05)

    refs = rng.standard_normal((3, 800))
    est = refs[cycle] + 0.01 * rng.standard_normal((3, 800))
    row = score_audio_mixture(est, refs, refs.sum(0), 8000)
    assert np.allclose(est[AudioTask.estimate_order(row["perm"])], refs, atol=0.1)

    refs = rng.standard_normal((4, 800))
    cycle4 = [1, 2, 3, 0]
    est = refs[cycle4] + 0.01 * rng.standard_normal((4, 800))
    row = fuss_row(est, refs, refs.sum(0))
    assert FussTask.estimate_order.__func__ is Task.estimate_order.__func__  # the one reading
    assert np.allclose(est[Task.estimate_order(row["perm"])], refs, atol=0.1)
    assert not np.allclose(est[parse_perm(row["perm"])], refs, atol=0.1)  # not the inverse
    with pytest.raises(ValueError, match="not a permutation"):
        Task.estimate_order("0,0")


def test_demo_npz_holds_the_scored_estimates_in_target_order(smoke_results):
    """Scoring the stored estimates against the stored targets gives each run's per-item
    scores again, with the identity permutation: they are the scored estimates, aligned."""
    checked = set()
    for record in iter_records(smoke_results):
        items = load_demo(record.path)
        assert items is not None, f"{record.path} has no {DEMO_FILE}"
        assert items.count == 8 and list(items.index) == list(range(8))
        scores = record.scores().set_index("mixture")
        if record.task == "mnist":
            assert items.estimates.shape == (8, 2, 1, 32, 32)
            assert np.allclose(items.mixtures, items.targets.mean(1), atol=2e-3)  # m / K
            again = image_separation_scores(
                torch.from_numpy(items.estimates), torch.from_numpy(items.targets)
            )
            assert (again["perm"] == "0,1").all(), record.method
            assert np.allclose(again["psnr"], scores["psnr"][:8], atol=0.05), record.method
        else:
            assert items.sample_rate == 8000 and items.estimates.shape == (8, 2, 8000)
            assert (items.lengths == 8000).all() and (items.offsets == 0).all()
            assert np.allclose(items.mixtures, items.targets.sum(1), atol=1e-3)
            for n in range(8):
                row = score_audio_mixture(
                    items.estimates[n].astype(np.float64),
                    items.targets[n].astype(np.float64),
                    items.mixtures[n].astype(np.float64),
                    8000,
                )
                assert row["perm"] == "0,1", (record.method, n)
                assert abs(row["si_sdr"] - scores["si_sdr"][n]) < 0.05, (record.method, n)
        checked.add((record.task, record.method))
    assert len(checked) == 7  # 4 on mnist (with the mixture row), 3 on fsdd2mix


# ------------------------------------------------------------------------- the site


def test_demo_site_from_smoke_runs(smoke_results, tmp_path, capsys):
    site = tmp_path / "site"
    assert _demo(smoke_results, site) == 0
    printed = capsys.readouterr().out
    index = (site / "index.html").read_text()
    for page in ("mnist-smoke.html", "fsdd2mix-smoke.html"):
        assert f'href="{page}"' in index
        assert f"wrote {site / page} (" in printed
    mnist = _check_files(site, site / "mnist-smoke.html")
    # the table's order (SURF Table 1 rows), the mixture reference row as the Mixture column
    assert mnist.headers == ["#", "Mixture", "Targets", "Supervised Regression", "MixIT",
                             "Regression (ReMixIT)"]  # fmt: skip
    tiles = [s for s in mnist.images if s.endswith(".png") and "/r" in s]
    assert len(tiles) == 8 * (1 + 2 + 3 * 2)
    fsdd = _check_files(site, site / "fsdd2mix-smoke.html", rate=8000)
    assert fsdd.headers == ["#", "Mixture", "Targets", "Supervised Regression", "MixIT"]
    assert len(fsdd.audio) == 8 * (1 + 2 + 2 * 2)
    assert all(duration == 1.0 for _, duration in fsdd.audio)
    assert len([s for s in fsdd.images if s.endswith("_spec.png")]) == len(fsdd.audio)
    text = (site / "mnist-smoke.html").read_text()
    # each cell states that item's score: the run's scores.parquet row of that mixture
    mixit = _record(smoke_results, "mnist", "mixit")
    psnr = mixit.scores().set_index("mixture")["psnr"]
    for n in range(8):
        assert f"PSNR {psnr[n]:.2f} dB" in text
    assert "SURF Table 1" in text and "21.90" in text  # the table, with the paper's MixIT PSNR
    assert "Provenance" in text and mixit.run_hash in text and "torch 2.11.0" in text
    assert "training_loss.png" in text or "curves.png" in text
    for page in ("mnist-smoke.html", "fsdd2mix-smoke.html"):
        size = _size(site / page)
        print(f"{page}: {size / 1e6:.2f} MB")
        assert size < PAGE_LIMIT_BYTES


def test_demo_runs_evaluated_before_demo_estimates(smoke_results, tmp_path, data_root):
    """A run without demo.npz gets its column with a note saying how to re-evaluate; a page
    none of whose runs stored any rebuilds mixtures and targets from --data-root."""
    results = tmp_path / "results"
    shutil.copytree(smoke_results, results)
    mixit = _record(results, "mnist", "mixit")
    for record in iter_records(results):
        if record.path == mixit.path or record.task == "fsdd2mix":  # as evaluated before
            (record.path / DEMO_FILE).unlink()
            data = json.loads((record.path / "metrics.json").read_text())
            del data["counts"]["demo_mixtures"]
            atomic_write_json(record.path / "metrics.json", data)
    site = tmp_path / "site"
    assert _demo(results, site, "--data-root", str(data_root)) == 0
    text = (site / "mnist-smoke.html").read_text()
    assert "no stored estimates: evaluated on" in text and "before the demo estimates" in text
    assert "The same `python -m benchmark run` command evaluates it again" in text
    page = _check_files(site, site / "mnist-smoke.html")
    assert "MixIT" in page.headers
    assert not any("_mixit_" in s for s in page.images)
    assert any("_remixit_" in s for s in page.images)
    fsdd = _check_files(site, site / "fsdd2mix-smoke.html", rate=8000)
    assert len(fsdd.audio) == 8 * 3  # mixture and two targets per row, no estimates
    assert "rebuilt from the data root" in (site / "fsdd2mix-smoke.html").read_text()
    # without the data there is nothing to show in the grid, but the page is written
    assert _demo(results, tmp_path / "site2", "--task", "fsdd2mix", "--data-root",
                 str(tmp_path / "nowhere")) == 0  # fmt: skip
    assert "No samples" in (tmp_path / "site2" / "fsdd2mix-smoke.html").read_text()
    # following the note: the same command evaluates the run again from its final checkpoint
    # (no retraining), to the same scores, and now it has its estimates
    before = mixit.scores()
    argv = smoke_argv(results, data_root, "--methods", "mixit", "--task", "mnist")
    assert main([*argv, "--executor", "debug"]) == 0
    assert "resumed from checkpoint at step 6/6" in (mixit.path / "log.txt").read_text()
    pd.testing.assert_frame_equal(mixit.scores(), before)
    assert load_demo(mixit.path).count == 8


def test_demo_errors_are_one_line(tmp_path, smoke_results, capsys):
    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    assert _demo(empty, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no finished runs in ") and "Traceback" not in err
    assert _demo(smoke_results, tmp_path / "out", "--preset", "paper") == 2
    assert "no finished runs at preset 'paper'" in capsys.readouterr().err
    assert _demo(smoke_results, tmp_path / "out", "--task", "nosuchtask") == 2
    assert "nosuchtask" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _demo(smoke_results, blocker / "site") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and str(blocker) in err
    assert _demo(smoke_results, tmp_path / "out", "--mixtures", "0") == 2
    assert "--mixtures" in capsys.readouterr().err


# ------------------------------------------------------------ audio fixture corpora


def test_demo_on_librimix_fuss_and_libri_fuss_fixtures(tmp_path, data_root):
    """The three corpora's layouts through ``run`` and ``demo``: Libri2Mix at 8 kHz with
    full-length (padded, 9.2-9.6 s) evaluation items cropped to excerpts, FUSS with 1-3 active
    of 4 slots (silent slots left out), LibriSpeech + FUSS with the speech estimate only."""
    root = tmp_path / "data"
    make_libri2mix(root, data_root)
    make_fuss(root, data_root)
    make_librispeech(root, data_root, "test-clean", 3)
    make_librispeech(root, data_root, "train-clean-100", 2)
    results = tmp_path / "results"
    runs = {
        "libri2mix": ["task.sample_rate=8000", "task.eval_segment_s=0"],
        "fuss": ["task.eval_segment_s=0"],
        "libri_fuss": [],
    }
    for task, overrides in runs.items():
        argv = smoke_argv(results, root, "--methods", "mixit", "--task", task)
        assert main([*argv, "--executor", "debug", "--set", "train.steps=2", *overrides]) == 0
    site = tmp_path / "site"
    assert _demo(results, site) == 0
    rates = {"libri2mix": 8000, "fuss": 16000, "libri_fuss": 16000}
    for task, rate in rates.items():
        page_file = site / f"{task}-smoke.html"
        page = _check_files(site, page_file, rate=rate)
        assert page.headers[:3] == ["#", "Mixture", "Targets"] and "MixIT" in page.headers[3]
        mixit = _record(results, task, "mixit")
        items = load_demo(mixit.path)
        assert items.count == 3  # the fixtures' evaluation sets have 3 items
        shown = [(src, d) for src, d in page.audio if "_mixit_" in src]
        targets = [(src, d) for src, d in page.audio if "_target" in src]
        if task == "libri2mix":
            # 9.2-9.6 s items: stored and shown as their loudest 3 s
            assert (items.item_lengths > 9 * 8000).all() and (items.lengths == 3 * 8000).all()
            assert all(d == 3.0 for _, d in page.audio) and len(shown) == 3 * 2
            assert "s of 9." in page_file.read_text()
        elif task == "fuss":
            active = [int((np.abs(items.targets[n]).max(-1) > 0).sum()) for n in range(3)]
            assert sorted(active) == [1, 2, 3] and len(targets) == len(shown) == sum(active)
            assert "silent reference slot" in page_file.read_text()
        else:
            assert len(targets) == len(shown) == 3  # speech only (scored_sources = (0,))
            assert all(re.search(r"_(target|mixit_)0\.wav$", s) for s, _ in shown + targets)
            assert "unscored source" in page_file.read_text()
        size = _size(page_file)
        print(f"{task}: {size / 1e6:.2f} MB")
        assert size < PAGE_LIMIT_BYTES
        # the stored estimates are the scored ones (SI-SDR over the stored window is not the
        # item's, so check the ordering on the scores' perm instead)
        scores = pd.read_parquet(mixit.scores_path)
        order = [FussTask.estimate_order(p) if task == "fuss" else Task.estimate_order(p)
                 for p in scores["perm"][:3]]  # fmt: skip
        assert np.array_equal(np.load(mixit.path / DEMO_FILE)["order"], np.array(order))


# ------------------------------------------------------------------ headless Chromium


def _browser():
    """A headless Chromium driven by Selenium through Debian's chromedriver (no download)."""
    reason = None
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        reason = f"{CHROMIUM} or {CHROMEDRIVER} missing (Debian: chromium chromium-driver)"
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            reason = "selenium is not installed (pip install -e '.[test]')"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install them")
        pytest.skip(f"{reason}; set CI=1 to make this a failure")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    return driver, profile


_MEDIA_STATE = """
return {
  images: [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]),
  audio: [...document.querySelectorAll('audio')].map(
      a => [a.getAttribute('src'), a.readyState, a.duration, parseFloat(a.dataset.duration),
            a.error ? a.error.code : 0]),
  resources: performance.getEntriesByType('resource').map(e => e.name),
  height: document.documentElement.scrollHeight,
  width: document.documentElement.scrollWidth,
};
"""


def _screenshot(driver, path: Path, width: int, height: int) -> None:
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(height, 16000), "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def _visit(driver, path: Path, site: Path) -> dict:
    """Open ``path`` (file://), wait up to 60 s for its images and audio metadata, and return
    the media state, the console errors and the requests: ``ours`` (made by a document under
    ``site``) and ``network`` (any http/https/ws/ftp request while the page was open)."""
    driver.get("about:blank")  # leave the previous page (or the start page) ...
    driver.get_log("performance")  # ... and drop its entries
    driver.get_log("browser")
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 60
    while True:
        state = driver.execute_script(_MEDIA_STATE)
        images_done = all(complete for _, complete, _w in state["images"])
        audio_done = all(ready >= 1 or error for _, ready, _d, _x, error in state["audio"])
        if (images_done and audio_done) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    state["errors"] = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    state["ours"], state["network"] = list(state["resources"]), []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.requestWillBeSent":
            continue
        url = message["params"]["request"]["url"]
        if message["params"].get("documentURL", "").startswith(site.resolve().as_uri()):
            state["ours"].append(url)
        if url.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp"):
            state["network"].append(url)
    return state


@pytest.mark.browser
def test_pages_in_headless_chromium(smoke_results, tmp_path):
    """Each page of the site from file://: every image decoded, every audio clip's metadata
    loaded with the stated duration, no console error, no request outside file:// (and
    data:); a full-page screenshot of each is saved. A control page with a remote image shows
    that the request and console checks catch one."""
    site = tmp_path / "site"
    assert _demo(smoke_results, site) == 0
    shots = Path(os.environ.get("BENCHMARK_DEMO_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    control = site / "control.html"
    control.write_text('<!DOCTYPE html><img src="https://example.invalid/x.png">')
    driver, profile = _browser()
    try:
        state = _visit(driver, control, site)
        assert state["network"] == ["https://example.invalid/x.png"] and state["errors"]
        for name in ("index.html", "mnist-smoke.html", "fsdd2mix-smoke.html"):
            state = _visit(driver, site / name, site)
            for src, complete, width in state["images"]:
                assert complete and width > 0, f"{name}: image {src} not decoded"
            for src, ready, duration, expected, error in state["audio"]:
                assert error == 0 and ready >= 1, f"{name}: audio {src} (error {error})"
                assert abs(duration - expected) < 1e-3, (name, src, duration, expected)
            if name == "mnist-smoke.html":
                assert len(state["images"]) == 8 * 9 + 1 and not state["audio"]
            if name == "fsdd2mix-smoke.html":
                assert len(state["audio"]) == 8 * 7
                assert all(abs(d - 1.0) < 1e-3 for _, _, d, _, _ in state["audio"])
            assert not state["errors"], f"{name}: console errors {state['errors']}"
            # the log saw the page and its files (the check is not empty)
            assert (site / name).resolve().as_uri() in state["ours"], name
            for src, *_ in state["images"]:
                assert (site / src).resolve().as_uri() in state["ours"], f"{name}: {src}"
            outside = [u for u in state["ours"] if not u.startswith(("file://", "data:"))]
            outside += state["network"]
            assert not outside, f"{name}: requests left file:// {outside}"
            shot = shots / f"demo_{name.replace('.html', '')}.png"
            _screenshot(driver, shot, min(state["width"], 2400), state["height"])
            assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
