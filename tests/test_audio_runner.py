"""Every method end to end on real FSDD audio (``fsdd2mix``, smoke preset) through the CLI:
Conv-TasNet for the regression methods, the time-frequency flow network for FLOSS and SURF,
the waveform score network for BASIS,
per-mixture audio scores, and the MixPIT/MixCycle Table I layout with the SC09Mix numbers."""

from __future__ import annotations

import pandas as pd
from helpers import smoke_argv

from benchmark.cli import main
from benchmark.store import RunRecord, iter_run_dirs, read_json, read_status

ALL_METHODS = "mixit,mixpit,mixcycle,remixit,self_remixing,surf_rm,surf_sr,supervised,floss,basis"


def test_every_method_runs_on_fsdd2mix(data_root, results_dir, capsys):
    code = main(
        smoke_argv(
            results_dir,
            data_root,
            "--methods",
            ALL_METHODS,
            "--task",
            "fsdd2mix",
            "--executor",
            "debug",
        )
    )
    assert code == 0
    runs = {d.parent.name: d for d in iter_run_dirs(results_dir)}
    assert set(runs) == {"mixture", *ALL_METHODS.split(",")}
    for method, run in runs.items():
        assert read_status(run)["state"] == "done", (method, read_status(run))
        record = RunRecord(run)
        assert record.counts["n_mixtures"] == 32
        assert -60.0 < record.metric_values()["si_sdri"] < 60.0, method
        scores = pd.read_parquet(run / "scores.parquet")
        assert len(scores) == 32 and {"si_sdr", "si_sdri", "pesq"} <= set(scores.columns)
        config = read_json(run / "config.json")["config"]
        if method != "mixture":
            # audio runs record the audio network sizes used (Conv-TasNet / flow network)
            assert config["audio_net"]["tasnet_x"] == 2 and config["audio_net"]["flow_dim"] == 16
    assert RunRecord(runs["mixture"]).metric_values()["si_sdri"] == 0.0
    log = (runs["surf_sr"] / "log.txt").read_text()
    assert "init_from_mixit: skipped on audio" in log
    curve = pd.read_csv(runs["surf_sr"] / "curve.csv")
    assert (curve["loss"] < 20).all()  # the log velocity error (dB), SURF D.5
    capsys.readouterr()
    assert main(["table", "--task", "fsdd2mix", "--results-dir", str(results_dir)]) == 0
    table = capsys.readouterr().out
    assert "MixPIT/MixCycle Table I layout" in table
    mixcycle = next(line for line in table.splitlines() if line.startswith("| MixCycle |"))
    assert mixcycle.count("(n=1)") == 2 and "| 15.90 |" in mixcycle  # ours beside SC09Mix's
    assert "| IRM (oracle) (paper only) | not run | 18.40 |" in table
    for label in ("MixIT", "MixPIT", "Supervised Regression", "SURF (Self-Remixing)"):
        assert f"| {label} |" in table
