"""Perceptual-metric stage of a run's evaluation (SURF Tables 1 and 2) and its bookkeeping.

After PSNR/SSIM (``job.evaluate``) an image run computes, with ``tasks/perceptual.py``:

- ``lpips``: per mixture, with the source permutation PSNR chose (``scores["perm"]``), added
  to ``scores.parquet``; mean in ``metrics.json``.
- ``fid``: the ``K x N`` separated images of the N evaluation mixtures against
  ``perceptual.fid_reference_images`` clean test images (SURF Table 1).
- ``table2_is``, ``table2_is_std``, ``table2_fid``: a second fixed set of
  ``perceptual.table2_mixtures`` mixtures (task seed + 1) is separated **by every method** (not
  only Table 2's rows: the cost is one extra evaluation pass, and the ``mixture`` row is the
  paper's "Average"); IS and FID of its ``K x table2_mixtures`` images, FID against the same
  reference set (SURF Table 2).

``metrics.json`` then holds the numbers (``None`` for a metric not computed) and a
``perceptual`` record: per metric its sample counts, reference set and feature extractor, or
``status: unavailable`` with the reason and the weights file to place. :func:`needs_refresh`
tells the runner to re-evaluate a finished run (no retraining) when these records are absent,
the settings changed, or missing weights have since been placed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark.config import RunConfig, to_dict
from benchmark.store import atomic_torch_save
from tasks.perceptual import (
    ALEXNET_FILE,
    INCEPTION_FILE,
    InceptionFeatures,
    WeightsMissing,
    find_weights,
    load_lpips,
    lpips_per_mixture,
    to_uint8_rgb,
)

__all__ = [
    "METRIC_GROUPS",
    "METRIC_WEIGHTS",
    "PERCEPTUAL_KEYS",
    "applies",
    "needs_refresh",
    "perceptual_stage",
    "unavailable_notes",
]

log = logging.getLogger("benchmark")

#: the weights file each metric group needs
METRIC_WEIGHTS = {"lpips": ALEXNET_FILE, "fid": INCEPTION_FILE, "table2": INCEPTION_FILE}
#: metrics.json keys written by this stage
PERCEPTUAL_KEYS = ("lpips", "fid", "table2_is", "table2_is_std", "table2_fid")
LPIPS_BACKBONE = "AlexNet (lpips 0.1, net='alex')"
FEATURE_EXTRACTOR = "inception-v3-compat (torch-fidelity)"


def applies(cfg: RunConfig) -> bool:
    """The perceptual metrics apply to runs whose task declares the ``perceptual`` section (the
    image tasks, ``tasks.images.ImageTask.config_schema``) while ``perceptual.enabled``."""
    return "perceptual" in cfg.sections and cfg.perceptual.enabled


def _reference(task, cfg: RunConfig) -> tuple[torch.Tensor, str]:
    """The clean test images of the FID reference set, as uint8, and its description."""
    images = task.images
    total = images.shape[0]
    num = cfg.perceptual.fid_reference_images
    if num >= total:
        chosen, how = images, f"all {total:,} images"
    else:
        gen = torch.Generator().manual_seed(cfg.task.seed)
        idx = torch.randperm(total, generator=gen)[:num]
        chosen = images[idx.to(images.device)]
        how = f"{num:,} of {total:,} images (random subset, task seed {cfg.task.seed})"
    desc = f"{task.name} test split, clean single images: {how}"
    return to_uint8_rgb(chosen.cpu()), desc


def _lpips_input(task, estimates: torch.Tensor) -> str:
    channels, height, width = estimates.shape[2:]
    text = f"{height}x{width} inputs"
    if getattr(task, "preprocessing", ""):
        text += f" ({task.preprocessing})"
    if channels == 1:
        text += ", grey replicated to 3 channels"
    return text + ", scaled to [-1, 1]"


def _reference_features(inception: InceptionFeatures, reference: torch.Tensor) -> dict:
    """Inception features of the reference set, cached (keyed by the images' and the weights'
    SHA-256) in ``$TORCH_HOME/fidelity_cache`` (torch-fidelity's cache folder), so that every
    run of a task embeds the clean test images once."""
    digest = hashlib.sha256(reference.numpy().tobytes())
    digest.update(hashlib.sha256(inception.weights_path.read_bytes()).digest())
    cache = Path(torch.hub.get_dir()).parent / "fidelity_cache"
    path = cache / f"surf-benchmark-reference-{digest.hexdigest()[:24]}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    features = inception.features(reference)
    try:
        atomic_torch_save(path, features)
    except OSError as exc:  # a read-only cache only costs time
        log.warning("could not cache reference features in %s: %s", cache, exc)
    return features


def _finite(value: float | None, name: str, record: dict[str, Any]) -> float | None:
    """``value`` if finite; otherwise None and the record says why (never report NaN/inf)."""
    if value is None or math.isfinite(value):
        return value
    record["status"] = "failed"
    record["reason"] = f"{name} was not finite ({value}); not reported"
    log.warning("%s was not finite (%s); not reported", name, value)
    return None


@torch.no_grad()
def _separate_uint8(method, mixtures: torch.Tensor, batch_size: int, seed: int) -> torch.Tensor:
    """Separate ``(N, C, H, W)`` mixtures; ``(N * K, 3, H, W)`` uint8 estimates."""
    generator = torch.Generator(device=method.device).manual_seed(seed)
    out = []
    for begin in range(0, mixtures.shape[0], batch_size):
        batch = mixtures[begin : begin + batch_size].to(method.device)
        est = method.separate(batch, generator).float().cpu()
        out.append(to_uint8_rgb(est.reshape(-1, *est.shape[2:])))
    return torch.cat(out)


def perceptual_stage(
    method,
    task,
    cfg: RunConfig,
    estimates: torch.Tensor,
    scores: pd.DataFrame,
    device: torch.device,
    weights_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Compute LPIPS, FID and Table 2's IS/FID for one run (see module docstring).

    Args:
        method: the trained method (eval mode).
        task: its image task.
        cfg: the run's config (``perceptual`` section used).
        estimates: ``(N, K, C, H, W)`` separated evaluation images (from ``job.evaluate``).
        scores: the per-mixture PSNR/SSIM frame with its ``perm`` column; an ``lpips`` column
            is added in place when LPIPS is computed.
        device: where LPIPS and Inception run.
        weights_dir: extra folder searched for weights (``--weights-dir``).

    Returns:
        Entries for the sections of ``metrics.json`` (:data:`benchmark.store.METRICS_SECTIONS`):
        ``metrics`` (the values, ``None`` when not computed), ``spread`` (LPIPS's std over
        mixtures), ``timings`` and the ``perceptual`` record. Empty when the run's task has no
        ``perceptual`` section or the stage is off.
    """
    if not applies(cfg):
        return {}
    pc = cfg.perceptual
    started = time.time()
    values: dict[str, Any] = dict.fromkeys(PERCEPTUAL_KEYS)
    spread: dict[str, float] = {}
    record: dict[str, Any] = {"settings": to_dict(pc)}
    data = task.eval_set()
    k = estimates.shape[1]

    # LPIPS (Table 1), with the permutation chosen by PSNR
    try:
        model = load_lpips(weights_dir, device)
        perms = np.array([[int(p) for p in s.split(",")] for s in scores["perm"]])
        per_mix = lpips_per_mixture(model, estimates, data.sources.cpu(), perms, pc.batch_size)
        record["lpips"] = {
            "status": "done",
            "backbone": LPIPS_BACKBONE,
            "input": _lpips_input(task, estimates),
            "permutation": "the PSNR-optimal one (scores.parquet column perm)",
            "n_mixtures": int(len(per_mix)),
            "n_images": int(len(per_mix) * k),
        }
        if np.isfinite(per_mix).all():
            scores["lpips"] = per_mix
            values["lpips"] = float(per_mix.mean())
            spread["lpips"] = float(per_mix.std(ddof=1)) if len(per_mix) > 1 else 0.0
        else:  # only non-finite estimates can do this; never report a NaN
            _finite(float(per_mix.mean()), "LPIPS", record["lpips"])
        del model
    except WeightsMissing as exc:
        record["lpips"] = {"status": "unavailable", **exc.record()}
        log.warning("LPIPS not computed: %s", exc)

    # FID (Table 1) and Table 2 need the Inception weights
    try:
        inception = InceptionFeatures(weights_dir, device, pc.batch_size)
    except WeightsMissing as exc:
        missing = {"status": "unavailable", **exc.record()}
        log.warning("FID / IS not computed: %s", exc)
        record["fid"] = missing
        record["table2"] = missing if pc.table2_mixtures > 0 else {"status": "disabled"}
    else:
        reference, ref_desc = _reference(task, cfg)
        ref_feats = _reference_features(inception, reference)
        flat = to_uint8_rgb(estimates.reshape(-1, *estimates.shape[2:]))
        fid = inception.fid(inception.features(flat), ref_feats)
        record["fid"] = {
            "status": "done",
            "n_mixtures": int(estimates.shape[0]),
            "n_images": int(flat.shape[0]),
            "reference": ref_desc,
            "n_reference": int(reference.shape[0]),
            "feature_extractor": FEATURE_EXTRACTOR,
        }
        values["fid"] = _finite(fid, "FID", record["fid"])
        if pc.table2_mixtures > 0:
            seed = cfg.task.seed + 1
            extra = task.mixture_set(pc.table2_mixtures, seed)
            images = _separate_uint8(method, extra.mixtures, cfg.eval.batch_size, 20_000 + cfg.seed)
            feats = inception.features(images)
            splits = max(1, min(pc.isc_splits, images.shape[0]))
            t2_is, t2_is_std = inception.inception_score(feats, splits)
            t2_fid = inception.fid(feats, ref_feats)
            record["table2"] = {
                "status": "done",
                "n_mixtures": pc.table2_mixtures,
                "mixture_set": f"{pc.table2_mixtures:,} mixtures drawn with task seed {seed}",
                "n_images": int(images.shape[0]),
                "reference": ref_desc,
                "n_reference": int(reference.shape[0]),
                "isc_splits": splits,
                "feature_extractor": FEATURE_EXTRACTOR,
            }
            if not math.isfinite(t2_is):
                t2_is_std = None
            values["table2_is"] = _finite(t2_is, "Table 2 Inception Score", record["table2"])
            values["table2_is_std"] = t2_is_std
            values["table2_fid"] = _finite(t2_fid, "Table 2 FID", record["table2"])
        else:
            record["table2"] = {"status": "disabled"}
        del inception
    return {
        "metrics": values,
        "spread": spread,
        "timings": {"perceptual_time_s": time.time() - started},
        "perceptual": record,
    }


def needs_refresh(record, cfg: RunConfig, weights_dir: Path | str | None = None) -> bool:
    """Whether a finished image run must be re-evaluated for its perceptual metrics: they were
    never computed, the ``perceptual`` settings changed, or a weights file that was missing is
    now present. Reads only (the runner records the new settings in ``config.json``).

    Args:
        record: the run (:class:`benchmark.store.RunRecord`).
        cfg: the run's config as planned now (its ``perceptual`` section is the wanted one).
        weights_dir: extra folder searched for weights (``--weights-dir``).
    """
    if not applies(cfg):
        return False
    stage = record.perceptual
    if not stage or stage.get("settings") != to_dict(cfg.perceptual):
        return True
    for group, file in METRIC_WEIGHTS.items():
        entry = stage.get(group) or {}
        if entry.get("status") == "unavailable" and find_weights(file, weights_dir):
            return True
    return False


#: table metric -> its group in the ``perceptual`` record, and the group's name in notes
METRIC_GROUPS = {
    "lpips": "lpips",
    "fid": "fid",
    "table2_is": "table2",
    "table2_is_std": "table2",
    "table2_fid": "table2",
}
_GROUP_LABELS = {"lpips": "LPIPS", "fid": "FID", "table2": "Table 2 IS/FID"}


def unavailable_notes(
    records: Iterable[dict[str, Any] | None], metrics: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Table footnotes from the runs' ``perceptual`` records (``metrics.json``).

    Args:
        records: the ``perceptual`` record of each run of the table (None: none).
        metrics: the table's metric columns; only their groups (:data:`METRIC_GROUPS`) count.

    Returns:
        ``(reasons, how)``: why metrics were not computed, one short line per missing weights
        file (the metrics it serves, the file, where to place it) or per distinct failure; and
        how the computed ones were obtained (backbone, sample counts, reference set). Each line
        once, however many runs share it.
    """
    groups = list(dict.fromkeys(METRIC_GROUPS[m] for m in metrics if m in METRIC_GROUPS))
    missing: dict[str, dict[str, Any]] = {}  # weights file -> {"labels", "dir"}
    failed: dict[str, None] = {}
    how: dict[str, None] = {}
    for record in records:
        if not isinstance(record, dict):
            continue
        for group in groups:
            entry = record.get(group) or {}
            label = _GROUP_LABELS[group]
            status = entry.get("status")
            if status == "unavailable" and entry.get("file"):
                searched = entry.get("searched") or []
                where = str(Path(searched[-1]).parent) if searched else "the torch hub cache"
                item = missing.setdefault(entry["file"], {"labels": {}, "dir": where})
                item["labels"][label] = None
            elif status in ("unavailable", "failed"):
                failed[f"{label}: {entry.get('reason', status)}"] = None
            elif status == "done" and group == "lpips":
                how[
                    f"LPIPS: {entry['backbone']}, {entry['input']}; source permutation: "
                    f"{entry['permutation']}."
                ] = None
            elif status == "done":
                how[
                    f"{label}: {entry['n_images']:,} separated images of {entry['n_mixtures']:,} "
                    f"mixtures vs {entry['reference']}; {entry['feature_extractor']}."
                ] = None
    reasons = [
        f"{', '.join(item['labels'])}: {file} missing; place it in {item['dir']} or in "
        "--weights-dir (download: README, Perceptual metrics)."
        for file, item in missing.items()
    ]
    return reasons + list(failed), list(how)
