"""Paired statistics of the tables (``benchmark/tables/stats.py``, ``table --ci``,
``table --compare A``): coverage of the intervals on synthetic paired data with a known shift,
reproducibility, and the engine on real smoke runs (MNIST: ``mixture`` one seed, ``mixit`` two
seeds) and on run folders written through ``benchmark.store`` with real ``scores.parquet``
files whose differences are known (tests/run_folders.py)."""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import smoke_argv
from run_folders import write_run
from scipy import stats as sps

from benchmark.cli import main
from benchmark.store import RunRecord, atomic_write_parquet
from benchmark.tables import render, render_table
from benchmark.tables import stats as st

REPLICATIONS = 200
SHIFT = 0.3  # dB: the true mean difference B - A of the synthetic data


# ------------------------------------------------------------------------- the statistics


def test_bootstrap_interval_of_paired_differences_covers_the_true_shift(capsys):
    """200 replications of 200 mixtures: A ~ N(15, 3²) dB per mixture, B = A + shift + skewed
    noise (Gamma(2, 1) - 2, mean 0, variance 2). The interval of the mean per-mixture
    difference must contain the true shift in >= 90 % of the replications (nominal 95 %), and
    not trivially: its width is the normal-theory one within 10 %."""
    rng = np.random.default_rng(2026)
    samples = []
    for _ in range(REPLICATIONS):
        a = rng.normal(15.0, 3.0, 200)
        b = a + SHIFT + rng.gamma(2.0, 1.0, 200) - 2.0
        samples.append(st.paired_sample({0: b.mean()}, {0: a.mean()}, {0: b}, {0: a}))
    assert {s.kind for s in samples} == {st.BOOTSTRAP}
    found = st.intervals(samples)
    coverage = np.mean([i.low <= SHIFT <= i.high for i in found])
    width = np.mean([i.high - i.low for i in found])
    normal_width = 2 * sps.norm.ppf(0.975) * math.sqrt(2.0) / math.sqrt(200)
    with capsys.disabled():
        print(f"\nbootstrap (BCa) coverage of the true shift: {coverage:.3f} over {REPLICATIONS}")
    assert 0.90 <= coverage <= 0.99
    assert abs(width / normal_width - 1) < 0.1
    assert all(i.n_items == 200 and i.kind == st.BOOTSTRAP for i in found)


def test_t_interval_over_seeds_covers_the_true_shift(capsys):
    """200 replications of 3 seeds whose per-seed differences are shift + N(0, 0.5²)."""
    rng = np.random.default_rng(7)
    samples = []
    for _ in range(REPLICATIONS):
        a = rng.normal(15.0, 1.0, 3)
        b = a + SHIFT + rng.normal(0.0, 0.5, 3)
        samples.append(st.paired_sample(dict(enumerate(b)), dict(enumerate(a)), {}, {}))
    found = st.intervals(samples)
    coverage = np.mean([i.low <= SHIFT <= i.high for i in found])
    with capsys.disabled():
        print(f"t-interval coverage of the true shift: {coverage:.3f} over {REPLICATIONS}")
    assert 0.90 <= coverage <= 0.99
    assert all(i.kind == st.T and i.n_items == 3 for i in found)
    # the textbook interval: mean ± t(0.975, k-1) s / sqrt(k)
    d = samples[0].values
    low, high = sps.t.interval(0.95, 2, loc=d.mean(), scale=sps.sem(d))
    assert (found[0].low, found[0].high) == pytest.approx((low, high), rel=1e-12)


def test_intervals_are_reproducible_and_do_not_depend_on_the_other_cells():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 1.0, (3, 500))
    alone = st.bootstrap_intervals([x[1]])[0]
    batched = st.bootstrap_intervals([x[0], x[1], x[2][:300]])[1]
    assert (alone.low, alone.high) == pytest.approx((batched.low, batched.high), rel=1e-12)
    assert st.bootstrap_intervals([x[1]])[0] == alone  # the same table twice: the same numbers
    # exactly the documented call: BCa, 9,999 resamples, generator seeded with BOOTSTRAP_SEED
    direct = sps.bootstrap(
        (x[1],), np.mean, n_resamples=9999, method="BCa", rng=np.random.default_rng(0)
    ).confidence_interval
    assert (alone.low, alone.high) == pytest.approx((direct.low, direct.high), rel=1e-12)
    assert alone.mean == pytest.approx(x[1].mean()) and alone.low < alone.mean < alone.high


def test_degenerate_samples():
    constant, single = st.bootstrap_intervals([np.full(40, 2.5), np.array([1.0, np.nan])])
    assert (constant.low, constant.high, constant.n_items) == (2.5, 2.5, 40)
    assert constant.excludes_zero and not st.Interval(0.0, 0.0, 0.0, 40, st.BOOTSTRAP).excludes_zero
    assert single.kind == st.NONE and single.mean == 1.0 and not single.excludes_zero
    with_nan = st.bootstrap_intervals([np.array([1.0, np.nan, 2.0, 4.0])])[0]
    assert with_nan.n_items == 3 and with_nan.mean == pytest.approx(7 / 3)
    assert st.t_interval([3.0]).kind == st.NONE
    assert st.cell_sample({0: 1.0}, {0: None}) is None  # one seed, no per-mixture values
    assert st.cell_sample({0: 1.0, 1: 2.0}, {}).kind == st.T
    assert st.paired_sample({0: 1.0}, {1: 1.0}, {}, {}) is None  # no seed in common
    with pytest.raises(ValueError, match="not the same evaluation set"):
        st.paired_sample({0: 1.0}, {0: 1.0}, {0: np.zeros(3)}, {0: np.zeros(4)})


# ------------------------------------------------------------------ tables on real smoke runs

SMOKE_SET = ["perceptual.fid_reference_images=4", "perceptual.table2_mixtures=2"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_root) -> Path:
    """Real smoke runs on MNIST (32 evaluation mixtures): ``mixture`` seed 0, ``mixit`` seeds 0
    and 1 (a real training, evaluation and ``scores.parquet`` each)."""
    results = tmp_path_factory.mktemp("stats") / "results"
    common = ["--task", "mnist", "--executor", "debug", "--device", "cpu", "--set", *SMOKE_SET]
    for methods, seeds in (("mixture", "0"), ("mixit", "0,1")):
        argv = smoke_argv(results, data_root, "--methods", methods, "--seeds", seeds)
        assert main([*argv, *common]) == 0
    return results


def _cli(capsys, results: Path, *args: str) -> str:
    assert main(["table", "--task", "mnist", "--results-dir", str(results), *args]) == 0
    return capsys.readouterr().out


def _scores(results: Path, method: str, seed: int) -> pd.DataFrame:
    (run,) = [
        RunRecord(d)
        for d in (results / "runs" / "mnist" / method).iterdir()
        if RunRecord(d).seed == seed
    ]
    return run.scores()


def _check_csv(csv: pd.DataFrame) -> None:
    """Every interval contains its mean; ``significant`` is exactly "the interval of the
    difference excludes 0"."""
    ci = csv[csv.interval.isin([st.BOOTSTRAP, st.T])]
    assert (ci.ci_low <= ci["mean"] + 1e-12).all() and (ci["mean"] <= ci.ci_high + 1e-12).all()
    diff = csv[csv.diff_interval.isin([st.BOOTSTRAP, st.T])]
    assert ((diff.diff_low <= diff["diff"]) & (diff["diff"] <= diff.diff_high)).all()
    excludes = (diff.diff_low > 0) | (diff.diff_high < 0)
    assert (diff.significant == excludes).all()
    assert not csv[~csv.diff_interval.isin([st.BOOTSTRAP, st.T])].significant.any()


def test_ci_and_compare_on_real_smoke_runs(smoke, capsys):
    csv = pd.read_csv(io.StringIO(_cli(capsys, smoke, "--ci", "--compare", "mixit", "--format",
                                       "csv")))  # fmt: skip
    for column in ("ci_low", "ci_high", "n_items", "interval", "diff", "diff_low", "diff_high",
                   "diff_n_items", "diff_interval", "significant"):  # fmt: skip
        assert column in csv.columns
    _check_csv(csv)
    psnr = csv[csv.metric == "psnr"].set_index("method")
    # mixture: one seed, the BCa bootstrap over its 32 mixtures; mixit: two seeds, t over seeds
    assert psnr.loc["mixture", ["interval", "n_items"]].tolist() == [st.BOOTSTRAP, 32]
    assert psnr.loc["mixit", ["interval", "n_items"]].tolist() == [st.T, 2]
    assert psnr.loc["mixit", "diff_interval"] == "reference"
    # the difference is paired mixture by mixture on the seed both have (seed 0)
    mixture, mixit = _scores(smoke, "mixture", 0), _scores(smoke, "mixit", 0)
    assert mixture.mixture.tolist() == mixit.mixture.tolist() == list(range(32))
    d = mixture.psnr.to_numpy() - mixit.psnr.to_numpy()
    expected = st.bootstrap_intervals([d])[0]
    row = psnr.loc["mixture"]
    assert row["diff"] == pytest.approx(d.mean()) and row.diff_n_items == 32
    assert (row.diff_low, row.diff_high) == pytest.approx((expected.low, expected.high))
    # FID (no weights here) is not computed: n/a, no interval claimed
    fid = csv[csv.metric == "fid"]
    assert (fid.n == 0).all() and fid.ci_low.isna().all()

    md = _cli(capsys, smoke, "--ci", "--compare", "mixit")
    line = next(x for x in md.splitlines() if x.startswith("| Mixture (no separation)"))
    assert f"{row['mean']:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}] (n=1)" in line
    assert "±" not in md  # one seed prints no ±, several seeds an interval instead
    delta = f"{row['diff']:+.2f} [{row.diff_low:+.2f}, {row.diff_high:+.2f}] (n=1)"
    assert (f"**{delta}**" in line) == bool(row.significant) and delta in line
    assert "BCa bootstrap (9,999 resamples" in md and "t-interval" in md
    # the reverse comparison is the same difference with the opposite sign
    reverse = pd.read_csv(io.StringIO(_cli(capsys, smoke, "--compare", "mixture", "--format",
                                           "csv")))  # fmt: skip
    back = reverse[(reverse.metric == "psnr") & (reverse.method == "mixit")].iloc[0]
    assert back["diff"] == pytest.approx(-row["diff"]) and back.ci_low != back.ci_low  # no --ci


# --------------------------------------------------------- tables on written run folders

N = 200


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    """Run folders (MNIST, preset ``cpu``, 200 mixtures) whose per-mixture PSNR differences to
    MixIT are known: ReMixIT +1 dB on seed 0 (significant), Self-Remixing exactly 0 on seed 0,
    SURF-SR +1.5 dB on each of 3 seeds (significant, t), SURF-RM ±0.5 dB on 2 seeds (not),
    Supervised with other task settings, FLOSS with its mixtures in another order, BASIS
    without scores.parquet; FUSS runs whose 2Si number is pooled (not the column mean). The
    results folder's name has HTML special characters."""
    results = tmp_path_factory.mktemp("written") / "a&b <c> 'd'" / "results"
    rng = np.random.default_rng(11)
    base = rng.normal(15.0, 3.0, N)
    runs: dict = {}

    def run(method: str, seed: int, psnr: np.ndarray, order=None, overrides=(), parquet=True):
        ssim = np.clip(0.6 + 0.01 * (psnr - 15.0), 0, 1)
        metrics = {"n_mixtures": N, "fid": 30.0 + seed - len(method) * 0.1}
        metrics.update(psnr=float(psnr.mean()), ssim=float(ssim.mean()))
        folder = write_run(results, method, "mnist", seed, "cpu", overrides, metrics)
        if parquet:
            frame = pd.DataFrame({"mixture": np.arange(N), "psnr": psnr, "ssim": ssim})
            if order is not None:
                frame = frame.iloc[order].reset_index(drop=True)
            atomic_write_parquet(folder / "scores.parquet", frame)
        runs[method, seed] = folder
        return folder

    mixit = {seed: base + rng.normal(0.0, 1.0, N) for seed in (0, 1, 2)}
    for seed, psnr in mixit.items():
        run("mixit", seed, psnr)
    noise = rng.normal(0.0, 0.5, N)
    run("remixit", 0, mixit[0] + 1.0 + noise)
    run("self_remixing", 0, mixit[0] + noise - noise.mean())  # mean difference exactly 0
    for seed in (0, 1, 2):
        run("surf_sr", seed, mixit[seed] + 1.5 + 0.1 * (seed - 1))
    for seed, offset in ((0, 0.5), (1, -0.5)):
        run("surf_rm", seed, mixit[seed] + offset)
    run("supervised", 0, base + 2.0, overrides=("task.eval_mixtures=200",))
    run("floss", 0, base + 2.0, order=np.roll(np.arange(N), 1))
    run("basis", 0, base + 1.0, parquet=False)
    # FUSS: fuss_1s is the mean of its column (an interval), fuss_2si pooled over sources (none)
    for method, offset in (("mixit", 0.0), ("remixit", 2.0)):
        one = rng.normal(10.0 + offset, 2.0, N)
        two = rng.normal(8.0 + offset, 2.0, N)
        metrics = {
            "n_mixtures": N,
            "fuss_1s": float(one.mean()),
            "fuss_2si": float(two.mean() + 0.7),
        }
        folder = write_run(results, method, "fuss", metrics=metrics)
        frame = pd.DataFrame({"mixture": np.arange(N), "fuss_1s": one, "fuss_2si": two})
        atomic_write_parquet(folder / "scores.parquet", frame)
    return {"results": results, "runs": runs, "mixit": mixit}


def _csv(results: Path, task: str = "mnist", **kwargs) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(render_table(results, task=task, fmt="csv", **kwargs)))


def test_marked_differences_are_those_whose_interval_excludes_zero(written):
    csv = _csv(written["results"], ci=True, compare="mixit")
    _check_csv(csv)
    psnr = csv[csv.metric == "psnr"].set_index("method")
    expect = {  # method: (interval of the difference, items, significant)
        "remixit": (st.BOOTSTRAP, N, True),
        "self_remixing": (st.BOOTSTRAP, N, False),
        "surf_sr": (st.T, 3, True),
        "surf_rm": (st.T, 2, False),
        "supervised": (st.NONE, None, False),  # other task settings
        "floss": (st.NONE, None, False),  # other order of the mixtures
        "basis": (st.NONE, None, False),  # no per-mixture values
    }
    for method, (kind, items, significant) in expect.items():
        row = psnr.loc[method]
        assert row.diff_interval == kind, method
        assert row.significant == significant, method
        if items is not None:
            assert row.diff_n_items == items, method
    remixit = RunRecord(written["runs"]["remixit", 0]).scores().psnr.to_numpy()
    assert psnr.loc["remixit", "diff"] == pytest.approx(np.mean(remixit - written["mixit"][0]))
    assert psnr.loc["self_remixing", "diff"] == pytest.approx(0.0, abs=1e-9)
    assert psnr.loc["surf_sr", "diff"] == pytest.approx(1.5)
    # cells: one seed -> bootstrap over the mixtures, several -> t over seeds; FID has no
    # per-mixture values: an interval only with several seeds
    assert psnr.loc["remixit", ["interval", "n_items"]].tolist() == [st.BOOTSTRAP, N]
    assert psnr.loc["surf_sr", ["interval", "n_items"]].tolist() == [st.T, 3]
    assert psnr.loc["basis", "interval"] == st.NONE and math.isnan(psnr.loc["basis", "ci_low"])
    fid = csv[csv.metric == "fid"].set_index("method")
    assert fid.loc["remixit", "interval"] == st.NONE and fid.loc["mixit", "interval"] == st.T
    assert fid.loc["remixit", "diff_interval"] == st.NONE  # one seed: no paired FID interval
    assert fid.loc["surf_sr", "diff_interval"] == st.T  # three seeds: paired by seed
    # md: bold exactly on the significant differences, and the notes say why the others are n/a
    md = render_table(written["results"], task="mnist", ci=True, compare="mixit")
    header = next(x for x in md.splitlines() if x.startswith("| Method |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    delta = columns.index("Δ PSNR vs MixIT")
    bold = set()
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(columns) and cells[delta].startswith("**"):
            bold.add(cells[0])
    names = {"remixit": "Regression (ReMixIT)", "surf_sr": "SURF (Self-Remixing)"}
    assert bold == {names[m] for m in psnr.index[psnr.significant]} == set(names.values())
    for reason in ("other task settings", "other evaluation mixtures",
                   "one seed and no per-mixture values (FID, PSNR, SSIM)"):  # fmt: skip
        assert reason in md
    assert "No interval for FID, PSNR, SSIM of one seed" in md  # FID: all; the others: BASIS
    assert "n≥2: Student t-interval" in md


def test_pooled_numbers_get_no_interval(written):
    csv = _csv(written["results"], task="fuss", ci=True, compare="mixit")
    one = csv[(csv.metric == "fuss_1s") & (csv.table == "surf_table3_fuss")].set_index("method")
    two = csv[(csv.metric == "fuss_2si") & (csv.table == "surf_table3_fuss")].set_index("method")
    assert one.loc["remixit", "interval"] == st.BOOTSTRAP and one.loc["remixit", "significant"]
    assert two.loc["remixit", "interval"] == st.NONE  # pooled over sources: not a column mean
    assert two.loc["remixit", "diff_interval"] == st.NONE


class _Checker(HTMLParser):
    """Collects the text of the ``<strong>`` cells and the tags left open."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.strong: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "strong":
            self.strong.append(data)


def test_html_is_well_formed_escaped_and_marks_the_same_cells(written):
    results = written["results"]
    broken = written["runs"]["self_remixing", 0] / "scores.parquet"
    saved = broken.read_bytes()
    try:
        broken.write_bytes(b"not a parquet file")  # its path, with & < > ', is in a note
        text, notes = render(results, "mnist", "html", None, "table1", None, None, ci=True,
                             compare="mixit")  # fmt: skip
    finally:
        broken.write_bytes(saved)
    assert any("unreadable scores file" in n and str(broken) in n for n in notes)
    root = ET.fromstring(text)  # well-formed XML: one <div>, every tag closed
    assert root.tag == "div" and root.find(".//table/thead") is not None
    assert "a&amp;b &lt;c&gt; &#x27;d&#x27;" in text and "a&b <c>" not in text
    assert "<code>cpu</code>" in text  # `code` in headings and notes
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.stack == []
    header = [th.text for th in root.iter("th") if th.get("scope") == "col"]
    delta = header.index("Δ PSNR vs MixIT")
    marked = set()
    for tr in root.iter("tr"):
        cells = list(tr)
        if len(cells) == len(header) and cells[delta].find("strong") is not None:
            marked.add(cells[0].text)
    assert marked == {"Regression (ReMixIT)", "SURF (Self-Remixing)"}
    assert "paper" in header and root.find(".//td[@class='paper']") is not None
    notes_text = " ".join("".join(p.itertext()) for p in root.iter("p"))
    assert "BCa bootstrap" in notes_text and "Δ vs MixIT" in notes_text
    # the demo page's call; the corrupt file is restored, so no note any more
    html, notes = render(results, "mnist", "html", None, "table1", None, None, ci=True,
                         compare=None)  # fmt: skip
    assert not notes and "Δ" not in html and re.search(r"\[\d+\.\d\d, \d+\.\d\d\] \(n=1\)", html)


def test_compare_errors_and_every_format(written, capsys):
    results = str(written["results"])
    args = ["table", "--results-dir", results, "--task", "mnist"]
    assert main([*args, "--compare", "mixitt"]) == 2
    assert "unknown method 'mixitt'" in capsys.readouterr().err
    assert main([*args, "--which", "table9", "--task", "cifar10", "--compare", "mixit"]) == 2
    assert "use --compare with --which table1 or table2" in capsys.readouterr().err
    for fmt in ("md", "latex", "html"):
        assert main([*args, "--ci", "--compare", "mixit", "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert ("$\\Delta$ PSNR vs MixIT" if fmt == "latex" else "Δ PSNR vs MixIT") in out
