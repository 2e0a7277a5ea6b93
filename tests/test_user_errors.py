"""Every fault a user can cause ends in one clear message: ``error: <message>`` on stderr naming
the file or setting and the fix, exit code 2, no traceback, nothing written.

The faulty inputs are real: copies of the real MNIST / CIFAR-10 / FSDD files (in
``../shared/data``, never modified) truncated in ``tmp_path``, LibriMix / FUSS fixtures in their
real layouts (``tests/audio_fixtures.py``) with a broken line, a results store made by a real
run with one file cut, and folders that cannot be written.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from audio_fixtures import make_fuss, make_libri2mix
from helpers import smoke_argv

from benchmark.checks import PathError, check_output_dir
from benchmark.cli import main
from benchmark.store import iter_run_records, read_status

REPO = Path(__file__).resolve().parent.parent
MNIST_RAW = ("MNIST", "raw")


def _fails(argv: list[str], capsys, *needles: str) -> str:
    """Run the CLI, assert exit 2 with one ``error:`` line naming every needle, no traceback;
    return stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("error: ") == 1, err
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _run(results: Path, data_root: Path, *args: str) -> list[str]:
    return smoke_argv(results, data_root, "--executor", "debug", *args)


# --------------------------------------------------------------------------------------------
# corrupt or truncated dataset files: one error before any run folder is written
# --------------------------------------------------------------------------------------------


def _mnist_copy(tmp_path: Path, data_root: Path) -> Path:
    raw = tmp_path.joinpath("data", *MNIST_RAW)
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(data_root.joinpath(*MNIST_RAW, name), raw / name)
    return raw


def test_truncated_mnist_gz_is_named_before_any_run(tmp_path, data_root, capsys):
    raw = _mnist_copy(tmp_path, data_root)
    packed = raw / "t10k-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:500_000])  # an interrupted download
    results = tmp_path / "results"
    err = _fails(
        _run(results, tmp_path / "data", "--methods", "mixit,remixit", "--task", "mnist"),
        capsys,
        str(packed),
        "truncated",
        "BENCHMARK_DOWNLOAD=1",
        "9fb629c4189551a2d022fa330f9573f3",  # the official md5, to check a replacement
    )
    assert "EOFError" not in err
    assert not results.exists()  # found once in the parent: no run folder, no failed job


def test_truncated_and_foreign_raw_idx_files_named(tmp_path, data_root, capsys):
    raw = _mnist_copy(tmp_path, data_root)
    plain = raw / "t10k-images-idx3-ubyte"  # the uncompressed file is read first
    plain.write_bytes(gzip.decompress((raw / "t10k-images-idx3-ubyte.gz").read_bytes())[:3_000_000])
    argv = _run(tmp_path / "r", tmp_path / "data", "--methods", "mixit", "--task", "mnist")
    _fails(argv, capsys, str(plain), "truncated: 3,000,000 bytes", "7,840,016")
    # the labels file under the images' name: a well-formed IDX file of the wrong kind
    plain.write_bytes(gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    _fails(argv, capsys, str(plain), "IDX magic number 0x0801, expected 0x0803")


@pytest.mark.parametrize("fault", ["truncated", "wrong size"])
def test_bad_cifar_jpeg_is_named(tmp_path, data_root, capsys, fault):
    from PIL import Image

    test = tmp_path / "data" / "cifar10-jpg" / "test"
    for label in ("cat", "dog"):
        (test / label).mkdir(parents=True)
        for path in sorted((data_root / "cifar10-jpg" / "test" / label).glob("*.jpg"))[:4]:
            shutil.copy(path, test / label / path.name)
    victim = sorted((test / "dog").glob("*.jpg"))[2]
    if fault == "truncated":
        victim.write_bytes(victim.read_bytes()[:300])
        needles = ("cannot decode it", "Truncated File Read")
    else:
        Image.open(victim).resize((16, 16)).save(victim)
        needles = ("is 16x16 pixels, expected 32x32",)
    argv = _run(tmp_path / "r", tmp_path / "data", "--methods", "mixit", "--task", "cifar10")
    err = _fails(argv, capsys, str(victim), *needles, "BENCHMARK_DOWNLOAD=1")
    assert "OSError" not in err


def test_truncated_fsdd_wav_is_named(tmp_path, data_root, capsys):
    recordings = tmp_path / "data" / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for digit in range(3):
        for speaker in ("george", "jackson", "lucas"):
            for take in (0, 1, 5, 6):
                name = f"{digit}_{speaker}_{take}.wav"
                shutil.copy(data_root / "fsdd" / "recordings" / name, recordings / name)
    victim = recordings / "2_jackson_5.wav"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a cut copy
    argv = _run(tmp_path / "r", tmp_path / "data", "--methods", "mixit", "--task", "fsdd2mix")
    _fails(argv, capsys, str(victim), "truncated", "header declares", "good copy")
    victim.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")  # a broken header
    _fails(argv, capsys, str(victim), "cannot read audio")


@pytest.fixture(scope="module")
def libri_root(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("librimix")
    make_libri2mix(root, data_root)
    return root


def _libri_argv(results: Path, root: Path, methods: str = "mixit") -> list[str]:
    argv = _run(results, root, "--methods", methods, "--task", "libri2mix")
    return argv + ["--set", "task.sample_rate=8000", "task.segment_s=1"]


def test_bad_librimix_csv_line_is_named(tmp_path, libri_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(libri_root, root)
    csv_path = root / "Libri2Mix" / "wav8k" / "min" / "metadata" / "mixture_train-360_mix_clean.csv"
    with open(csv_path, "a") as handle:
        handle.write("104-2000-0004_204-3000-0004,train-360/mix_clean/x.wav\n")  # a cut line
    results = tmp_path / "results"
    _fails(
        _libri_argv(results, root),
        capsys,
        f"{csv_path}, line 5",
        "no value for source_1_path, source_2_path, length",
        "LibriMix scripts",
    )
    assert not results.exists()
    # the mixture reference reads only the test split: it is not held up by the training CSV
    assert main([*_libri_argv(results, root, "mixture"), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "1 would be submitted" in out and "warning" not in err, err


def test_bad_fuss_list_line_is_named(tmp_path, data_root, capsys):
    folder = make_fuss(tmp_path / "data", data_root, counts=(("train", 2), ("eval", 2)))
    listing = folder / "eval_example_list.txt"
    with open(listing, "a") as handle:
        handle.write("eval/example00009.wav\teval/example00009_sources/background0_sound.wav\n")
    argv = _run(tmp_path / "r", tmp_path / "data", "--methods", "mixit", "--task", "fuss")
    _fails(argv, capsys, f"{listing}, line 3: file not found: eval/example00009.wav")
    listing.write_text(listing.read_text().replace("\t", "\t\t", 1))  # an empty field
    _fails(argv, capsys, f"{listing}, line 1: empty field")


def test_missing_data_found_once_in_parent_and_warned_in_dry_run(tmp_path, capsys):
    results = tmp_path / "results"
    methods = ["--methods", "mixit,remixit,surf_sr", "--task", "mnist"]
    argv = _run(results, tmp_path / "nodata", *methods)
    _fails(argv, capsys, "mnist test split not found", str(tmp_path / "nodata"))
    assert not results.exists()  # not one failed job per run: no run was prepared
    assert main([*argv, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "would be submitted" in out and not results.exists()
    assert err.count("warning: `run` would stop here: mnist test split not found") == 1, err


# --------------------------------------------------------------------------------------------
# folders and files that cannot be written, or results folders that do not exist
# --------------------------------------------------------------------------------------------


def test_results_dir_under_a_regular_file(tmp_path, data_root, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    bad = blocker / "results"
    argv = _run(bad, data_root, "--methods", "mixit", "--task", "mnist")
    needles = (f"--results-dir {bad}", "not a directory", f"{blocker} is a file")
    _fails(argv, capsys, *needles)
    _fails([*argv, "--dry-run"], capsys, *needles)  # it cannot even be read
    ablate = ["ablate", "--study", "ema", "--task", "mnist", "--preset", "smoke"]
    _fails([*ablate, "--results-dir", str(bad), "--data-root", str(data_root)], capsys, *needles)
    # /etc/hostname is a regular file on every Linux system: fails even for root
    _fails(_run(Path("/etc/hostname/x"), data_root, "--methods", "mixit", "--task", "mnist"),
           capsys, "/etc/hostname/x", "not a directory")  # fmt: skip


def test_figure_out_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    (tmp_path / "results").mkdir()
    io = ["--results-dir", str(tmp_path / "results")]
    _fails(["figure", *io, "--out", str(blocker / "fig.png")], capsys, "--out", "not a directory")
    _fails(["figure", *io, "--out", str(tmp_path)], capsys, f"--out {tmp_path}", "it is a folder")
    _fails(
        ["figure", "--which", "ablations", *io, "--out", str(blocker)],
        capsys,
        f"--out {blocker}",
        "it is a file",
    )


@pytest.mark.parametrize("command", ["status", "table", "figure"])
def test_results_dir_to_read_must_exist(tmp_path, capsys, command):
    missing = tmp_path / "typo"
    _fails([command, "--results-dir", str(missing)], capsys, str(missing), "does not exist")
    (tmp_path / "file").write_text("x")
    _fails([command, "--results-dir", str(tmp_path / "file")], capsys, "not a directory")


def _as_nobody(function) -> int:
    """Run ``function()`` (returning an exit code) in a forked child with the uid and gid of
    ``nobody`` (root ignores permission bits); the child's stdout/stderr are the parent's file
    descriptors (pytest's capfd). Every module the child needs must be imported already: the
    interpreter's own files may be unreadable for ``nobody``."""
    pid = os.fork()
    if pid == 0:  # child
        code = 70
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = function()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_read_only_results_dir_is_refused_before_any_job(data_root, capfd):
    import benchmark.cli_ablate  # noqa: F401 - imported before a fork (see _as_nobody)
    import benchmark.runner  # noqa: F401
    import benchmark.status  # noqa: F401
    import benchmark.submit  # noqa: F401
    from benchmark.registry import method_names, task_names

    method_names(), task_names()  # loads every method and task module
    # a folder that user nobody can reach (pytest's tmp_path is private to root)
    top = Path(tempfile.mkdtemp(prefix="user-errors-"))
    try:
        top.chmod(0o755)
        locked, open_ = top / "locked", top / "open"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)  # r-x for everyone: nobody may not create anything in it
        open_.mkdir()
        open_.chmod(0o777)
        argv = _run(locked / "results", data_root, "--methods", "mixit", "--task", "mnist")

        def check() -> int:
            check_output_dir(open_ / "results", "--results-dir")  # the control: no error
            return main(argv)

        if os.geteuid() == 0:
            code = _as_nobody(check)
        else:
            code = check()
        out, err = capfd.readouterr()
        assert code == 2, (out, err)
        assert err.count("error: ") == 1 and "Traceback" not in out + err, err
        assert f"--results-dir {locked / 'results'}" in err
        assert "permission denied" in err and f"may not write in {locked}" in err
        assert not any(locked.iterdir())
        # the same check in this process: root may write there, and the check agrees
        if os.geteuid() == 0:
            check_output_dir(locked / "results", "--results-dir")
        else:
            with pytest.raises(PathError):
                check_output_dir(locked / "results", "--results-dir")
    finally:
        (top / "locked").chmod(0o755)
        shutil.rmtree(top)


# --------------------------------------------------------------------------------------------
# a corrupt file in the results store
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_root):
    """A real results store: MixIT and the mixture reference, done (smoke preset)."""
    results = tmp_path_factory.mktemp("store") / "results"
    assert main(_run(results, data_root, "--methods", "mixit", "--task", "mnist")) == 0
    return results


def _corrupt_copy(store: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    results = tmp_path / "results"
    shutil.copytree(store, results)
    (run_dir,) = (results / "runs" / "mnist" / "mixit").iterdir()
    victim = run_dir / name
    victim.write_text('{"state": "do')  # cut mid-write by something other than the store
    return results, victim


@pytest.mark.parametrize("name", ["config.json", "status.json", "metrics.json", "job.json"])
def test_status_lists_the_other_runs_and_names_the_corrupt_file(store, tmp_path, capsys, name):
    results, victim = _corrupt_copy(store, tmp_path, name)
    assert main(["status", "--results-dir", str(results)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    mixture = next(line for line in out.splitlines() if line.startswith("mnist  mixture"))
    assert mixture.split()[5] == "done"  # state column
    assert f"skipped corrupt run folder {victim.parent}: corrupt results file {victim}" in out
    assert "1 corrupt, 1 done" in out


@pytest.mark.parametrize(
    "name", ["config.json", "status.json", "metrics.json", "progress.json", "job.json"]
)
def test_run_refuses_a_corrupt_run_and_dry_run_shows_it(store, tmp_path, data_root, capsys, name):
    results, victim = _corrupt_copy(store, tmp_path, name)
    before = victim.read_bytes()
    argv = _run(results, data_root, "--methods", "mixit", "--task", "mnist")
    assert main([*argv, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert f"skipped corrupt run folder {victim.parent}: corrupt results file {victim}" in out
    assert "corrupt  refuse (corrupt file)" in out and "skip (done)" in out  # the mixture run
    err = _fails(argv, capsys, str(victim), "nothing was run", "delete it")
    assert victim.read_bytes() == before  # refused, not overwritten
    # the fix given works: delete what it says, and the same command completes the run
    victim.unlink()
    if name == "metrics.json":
        (victim.parent / "status.json").unlink()
    assert main(argv) == 0
    capsys.readouterr()
    assert read_status(victim.parent)["state"] == "done"


def test_iter_run_records_yields_the_error_and_goes_on(store, tmp_path):
    results, victim = _corrupt_copy(store, tmp_path, "status.json")
    records = list(iter_run_records(results, read_status))
    assert len(records) == 2
    errors = {run_dir.parent.name: error for run_dir, _, error in records}
    assert errors["mixture"] is None and errors["mixit"].path == victim
    states = {run_dir.parent.name: value for run_dir, value, _ in records}
    assert states["mixture"]["state"] == "done" and states["mixit"] is None


# --------------------------------------------------------------------------------------------
# main(): user errors are one line without a traceback; bugs keep theirs
# --------------------------------------------------------------------------------------------


def test_command_line_prints_no_traceback_for_a_corrupt_dataset(tmp_path, data_root):
    raw = _mnist_copy(tmp_path, data_root)
    packed = raw / "t10k-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:100_000])
    argv = _run(tmp_path / "r", tmp_path / "data", "--methods", "mixit", "--task", "mnist")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: corrupt MNIST file {packed}"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    import benchmark.status

    def broken(results_dir):
        raise RuntimeError("a bug")

    (tmp_path / "results").mkdir()
    monkeypatch.setattr(benchmark.status, "render_status", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["status", "--results-dir", str(tmp_path / "results")])


# --------------------------------------------------------------------------------------------
# settings: a misspelt --set method prefix, section or field, and values out of their declared
# range are refused before anything is written
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "needles"),
    [
        ("mixitt:train.steps=3", ("unknown method prefix 'mixitt'", "did you mean 'mixit'")),
        ("trian.steps=3", ("unknown config section 'trian'", "did you mean 'train'")),
        ("train.stepz=3", ("unknown config field 'train.stepz'", "did you mean 'steps'")),
        ("train.lr=-1", ("train.lr must be > 0.0, got -1.0", "(set by --set train.lr=-1)")),
        ("train.lr=0", ("train.lr must be > 0.0, got 0.0",)),
        ("train.batch_size=0", ("train.batch_size must be >= 1, got 0",)),
        ("surf.ema_decay=1.5", ("surf.ema_decay must be <= 1.0, got 1.5",)),
        ("mixit.loss=l2", ("mixit.loss must be one of 'mse', 'snr'; got 'l2'",)),
        ("train.steps=many", ("train.steps", "could not be converted to Integer")),
        ("net.ch_mult=1,x", ("net.ch_mult", "--set net.ch_mult=1,x")),
    ],
)
def test_bad_settings_are_named_before_any_run(tmp_path, data_root, capsys, setting, needles):
    results = tmp_path / "results"
    argv = _run(results, data_root, "--methods", "surf_sr", "--task", "mnist", "--set", setting)
    _fails(argv, capsys, *needles)
    assert not results.exists()


def test_result_files_are_readable_by_the_group(tmp_path, data_root, capsys):
    """Results folders are shared on clusters: files 0644 and folders 0755 (umask 022)."""
    results = tmp_path / "results"
    old = os.umask(0o022)
    try:
        assert main(_run(results, data_root, "--methods", "mixture", "--task", "mnist")) == 0
    finally:
        os.umask(old)
    files = [p for p in results.rglob("*") if p.is_file() and ".run.lock" not in p.name]
    assert any(p.name == "metrics.json" for p in files)
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o644, path
    for path in [p for p in results.rglob("*") if p.is_dir()]:
        assert path.stat().st_mode & 0o777 == 0o755, path
