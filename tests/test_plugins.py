"""Plug-ins from outside the repository (tests/plugin_example, a real distribution).

The example package holds a method with a config section of its own (``noisy_student``, a
teacher-student method that starts from the trained ``mixit`` run) and a task (``mnist3``).
It is installed with pip into a folder of its own and found through its entry points, or
imported with ``--plugins``; everything runs in subprocesses, as a user would run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.config import ConfigError, param
from benchmark.registry import PluginError, Registry, UnknownName
from benchmark.store import iter_records

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "tests" / "plugin_example"


def _bench(
    args: list[str], pythonpath: list[Path], timeout: int = 900
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [*pythonpath, REPO])}
    env.pop("BENCHMARK_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def plugin_source(tmp_path_factory) -> Path:
    """A copy of the example package (pip builds in the source tree)."""
    target = tmp_path_factory.mktemp("plugin_src") / "plugin_example"
    shutil.copytree(PLUGIN, target)
    return target


@pytest.fixture(scope="module")
def plugin_site(plugin_source, tmp_path_factory) -> Path:
    """The example distribution installed by pip into a folder of its own (no network)."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        + ["--no-build-isolation", "--target", str(site), str(plugin_source)],
        check=True,
        timeout=300,
    )
    assert list(site.glob("surf_benchmark_example_plugin-0.1.0.dist-info"))
    return site


def test_installed_plugin_runs_end_to_end(plugin_site, data_root, tmp_path):
    listing = _bench(["list"], [plugin_site])
    assert listing.returncode == 0, listing.stderr
    assert "noisy_student" in listing.stdout and "mnist3" in listing.stdout
    assert (
        "from entry point noisy_student = example_plugin.noisy_student "
        "(surf-benchmark-example-plugin 0.1.0)" in listing.stdout
    )
    assert "from built in (methods/mixit.py)" in listing.stdout

    results = tmp_path / "results"
    io = ["--results-dir", str(results), "--data-root", str(data_root)]
    grid = ["--methods", "noisy_student", "--task", "mnist3", "--preset", "smoke"]
    # a bad value of the plug-in's own field: one clear line, exit 2, nothing written
    bad = _bench(["run", *grid, *io, "--set", "noisy_student.noise_std=-1"], [plugin_site])
    assert bad.returncode == 2, bad.stderr
    assert "noisy_student.noise_std must be >= 0.0, got -1.0" in bad.stderr
    assert "--set noisy_student.noise_std=-1" in bad.stderr and "Traceback" not in bad.stderr
    assert not results.exists()

    done = _bench(["run", *grid, *io, "--executor", "local"], [plugin_site])
    assert done.returncode == 0, done.stdout + done.stderr
    records = {r.method: r for r in iter_records(results)}
    assert set(records) == {"mixture", "mixit", "noisy_student"}  # the teacher was planned
    student = records["noisy_student"]
    assert student.state == "done" and student.teacher.path == records["mixit"].path
    # read as plain data: this test process has not imported the plug-in
    assert student.raw_config["noisy_student"]["noise_std"] == 0.05  # the plug-in's preset
    assert student.raw_config["task"]["num_sources"] == 3 and student.counts["n_mixtures"] == 24
    assert 0 < student.metric_values()["psnr"] < 60

    # the plug-in's field changes the run's address, not the teacher's
    other = _bench(
        ["run", *grid, *io, "--dry-run", "--set", "noisy_student.noise_std=0.2"], [plugin_site]
    )
    assert other.returncode == 0, other.stderr
    assert student.run_hash not in other.stdout and records["mixit"].run_hash in other.stdout

    table = _bench(["table", "--task", "mnist3", "--results-dir", str(results)], [plugin_site])
    assert table.returncode == 0, table.stderr
    assert "MNIST (3 Source Mixtures, example plug-in)" in table.stdout
    row = next(x for x in table.stdout.splitlines() if x.startswith("| Noisy Student"))
    assert "21.50" in row  # the plug-in's own paper-number CSV
    status = _bench(["status", "--results-dir", str(results)], [plugin_site])
    assert status.returncode == 0 and "noisy_student" in status.stdout

    ablate = _bench(
        ["ablate", "--study", "batch", "--methods", "noisy_student", "--task", "mnist3"]
        + ["--preset", "smoke", "--seeds", "0", *io],
        [plugin_site],
    )
    assert ablate.returncode == 0, ablate.stdout + ablate.stderr
    batches = {
        r.raw_config["train"]["batch_size"]
        for r in iter_records(results)
        if r.method == "noisy_student"
    }
    assert batches == {1, 4, 16, 64, 256} | {8}  # the grid, and the earlier run at smoke's B
    wrong = _bench(
        ["ablate", "--study", "ema", "--methods", "noisy_student", "--task", "mnist3", *io],
        [plugin_site],
    )
    assert wrong.returncode == 2 and "studies that apply to 'noisy_student': batch" in wrong.stderr


def test_plugins_option_imports_modules_in_the_jobs_too(plugin_source, data_root, tmp_path):
    """``--plugins`` (no installation): the planned runs record the modules, and the local
    jobs, which are other processes, import them before reading their config."""
    results = tmp_path / "results"
    modules = "example_plugin.noisy_student,example_plugin.mnist3"
    args = ["run", "--methods", "mixit", "--task", "mnist3", "--preset", "smoke"]
    args += ["--results-dir", str(results), "--data-root", str(data_root), "--set"]
    args += ["train.steps=2", "--executor", "local", "--plugins", modules]
    done = _bench(args, [plugin_source])
    assert done.returncode == 0, done.stdout + done.stderr
    (mixit,) = [r for r in iter_records(results) if r.method == "mixit"]
    assert mixit.info["plugins"] == modules.split(",") and mixit.state == "done"
    missing = _bench(["list", "--plugins", "example_plugin.nope"], [plugin_source])
    assert missing.returncode == 2 and "'example_plugin.nope' cannot be imported" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_new_field_changes_only_the_plugin_module(plugin_source, tmp_path, data_root):
    """Adding a config field to a method edits its own module and nothing else."""
    edited = tmp_path / "edited"
    shutil.copytree(plugin_source, edited)
    module = edited / "example_plugin" / "noisy_student.py"
    text = module.read_text()
    field = "    noise_std: float = param(0.1, ge=0.0, finite=True)\n"
    module.write_text(text.replace(field, field + "    warmup_steps: int = param(0, ge=0)\n"))
    changed = [
        str(p.relative_to(edited))
        for p in sorted(edited.rglob("*"))
        if p.is_file() and (plugin_source / p.relative_to(edited)).read_bytes() != p.read_bytes()
    ]
    assert changed == ["example_plugin/noisy_student.py"]
    args = ["run", "--methods", "noisy_student", "--task", "mnist3", "--preset", "smoke"]
    args += ["--results-dir", str(tmp_path / "r"), "--data-root", str(data_root), "--dry-run"]
    args += ["--plugins", "example_plugin.noisy_student,example_plugin.mnist3"]
    ok = _bench([*args, "--set", "noisy_student.warmup_steps=3"], [edited])
    assert ok.returncode == 0, ok.stderr
    bad = _bench([*args, "--set", "noisy_student.warmup_steps=-3"], [edited])
    assert bad.returncode == 2 and "noisy_student.warmup_steps must be >= 0" in bad.stderr


# -- the registry ------------------------------------------------------------------------------


class _Base:
    name = "base"


def test_registry_checks_the_base_class_and_suggests_near_names():
    registry: Registry = Registry("widget", f"{__name__}:_Base")

    class Good(_Base):
        name = "sparse_mixit"

    registry.register(Good)
    assert registry.get("sparse_mixit") is Good
    with pytest.raises(UnknownName, match=r"did you mean 'sparse_mixit'\? valid widgets"):
        registry.get("sparse_mixt")
    with pytest.raises(PluginError, match="must be a subclass of"):
        registry.add("bad", object)

    class Twin(_Base):
        name = "sparse_mixit"

    with pytest.raises(PluginError, match="registered twice"):
        registry.register(Twin)
    assert registry.origin("sparse_mixit").startswith("module ")  # neither built in nor installed


def test_param_declares_the_checks_beside_the_field():
    from dataclasses import dataclass

    from benchmark.config import check_fields

    @dataclass
    class Section:
        rate: float = param(0.5, gt=0.0, le=1.0)
        kind: str = param("a", choices=("a", "b"))

    check_fields(Section(), "s")
    with pytest.raises(ConfigError, match=r"s\.rate must be > 0\.0, got 0\.0 \(set by here\)"):
        check_fields(Section(rate=0.0), "s", {"s.rate": "here"})
    with pytest.raises(ConfigError, match=r"s\.kind must be one of 'a', 'b'; got 'c'"):
        check_fields(Section(kind="c"), "s")
