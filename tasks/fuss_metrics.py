"""FUSS separation metrics (Wisdom et al. 2021, "What's all the fuss about free universal sound
separation data?", ICASSP; the published ``evaluate_lib.compute_metrics`` / ``evaluate`` of
google-research/sound-separation, DCASE 2020 FUSS baseline), reimplemented in NumPy (float64).

Per example with references and estimates of shape ``(S, T)`` (FUSS: S = 4 slots, references
padded with silence):

1. **Robust SI-SNR** (their ``signal_to_noise_ratio_gain_invariant``; Borga eq. 4.38): both
   signals are normalised to unit energy (``x / sqrt(max(||x||^2, 1e-16))``), no mean removal;
   with the cosine similarity ``c``, signal power ``c^2`` and noise power ``1 - c^2`` (or, where
   that is below 0.01, the directly computed ``||e_hat - c t_hat||^2``),
   ``SI-SNR = 10 log10((c^2 + eps) / (noise + eps))``, ``eps = 1e-8``: bounded to about
   ±80 dB (+80 for a perfect estimate, -80 for a silent estimate or reference).
2. **Alignment**: estimates are permuted onto the S reference slots by exhaustive search of the
   permutation maximising the summed SI-SNR (:func:`methods.pit.best_permutation` on the
   ``[reference slot, estimate]`` matrix, so that ties go to the first slot-to-estimate
   assignment in ``itertools`` order, as before; silent slots make such ties common).
3. **Activity**: a reference is active when its RMS exceeds 1e-8; an (aligned) estimate is active
   when its power (mean square) exceeds 0.01 x the power of the quietest active reference
   (20 dB below it); a pair is active when both are.
4. **Improvement**: ``SI-SNRi = SI-SNR(estimate, ref) - SI-SNR(mixture, ref)`` with the mixture
   the sum of the references (the FUSS mixture).
5. **Pooling** over examples by number of active references: ``1S`` = mean SI-SNR of the active
   pairs of 1-source examples; ``2Si``, ``3Si``, ``4Si`` = mean SI-SNRi of the active pairs of
   2/3/4-source examples; ``MSi`` = the same pooled over 2-4 (means over sources, not examples);
   Under/Equal/Over = fraction of examples with fewer/equal/more active estimates than active
   references. Examples whose references are all silent are skipped, as ``evaluate_lib`` does,
   and counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from methods.pit import best_permutation

__all__ = [
    "FUSS_EPS",
    "fuss_example_scores",
    "fuss_row",
    "fuss_si_snr",
    "fuss_summary",
]

FUSS_EPS = 1e-8
MAX_SOURCES = 4


def fuss_si_snr(estimate: np.ndarray, target: np.ndarray, eps: float = FUSS_EPS) -> np.ndarray:
    """Robust cosine-similarity SI-SNR of FUSS (module docstring, step 1), in dB.

    Args:
        estimate: ``(..., T)`` estimates.
        target: ``(..., T)`` references (broadcast against ``estimate``).
        eps: the stabiliser (1e-8): results lie in about [-80, 80] dB.

    Returns:
        ``(...)`` float64 SI-SNR.
    """

    def normalize(x: np.ndarray) -> np.ndarray:
        power = (x * x).sum(-1, keepdims=True)
        return x / np.sqrt(np.maximum(power, 1e-16))

    e_hat = normalize(np.asarray(estimate, dtype=np.float64))
    t_hat = normalize(np.asarray(target, dtype=np.float64))
    cosine = (e_hat * t_hat).sum(-1)
    signal = cosine**2
    noise = 1.0 - signal
    direct = ((e_hat - t_hat * cosine[..., None]) ** 2).sum(-1)
    noise = np.where(noise >= 0.01, noise, direct)
    return 10.0 * np.log10((signal + eps) / (noise + eps))


def fuss_example_scores(
    estimates: np.ndarray, references: np.ndarray, mixture: np.ndarray | None = None
) -> dict[str, Any]:
    """FUSS metrics of one example (module docstring, steps 1-4).

    Args:
        estimates: ``(S, T)`` separated signals in any order.
        references: ``(S, T)`` reference sources, silent rows for absent sources.
        mixture: ``(T,)`` the mixture; default the sum of the references.

    Returns:
        ``perm`` (the project's convention, :mod:`methods.pit`: estimate k is aligned to
        reference slot ``perm[k]``), ``si_snr``, ``si_snr_mixture``,
        ``si_snri`` (``(S,)`` dB per reference slot), ``power_sources``, ``power_separated``
        (``(S,)`` mean squares, aligned), ``active_refs``, ``active_seps``, ``active_pairs``
        (``(S,)`` bool), ``num_active_refs``, ``num_active_seps``, ``num_active_pairs`` (int),
        ``under``, ``equal``, ``over`` (bool).

    Raises:
        ValueError: shapes that are not matching ``(S, T)`` arrays.
    """
    references = np.asarray(references, dtype=np.float64)
    estimates = np.asarray(estimates, dtype=np.float64)
    if references.ndim != 2 or references.shape != estimates.shape:
        raise ValueError(
            f"expected references and estimates of the same (S, T) shape, got "
            f"{references.shape} and {estimates.shape}"
        )
    num = references.shape[0]
    if mixture is None:
        mixture = references.sum(0)
    # pair[i, j] = SI-SNR(estimate j, reference i): searched with slots as rows, so that the
    # result is evaluate_lib's slot -> estimate assignment (and its tie order)
    pair = fuss_si_snr(estimates[None, :, :], references[:, None, :])
    _, slot_perm = best_permutation(torch.from_numpy(pair)[None], maximize=True)
    best = slot_perm[0].numpy()  # reference slot i gets estimate best[i]
    aligned = estimates[best]
    si_snr = pair[np.arange(num), best]
    si_snr_mixture = fuss_si_snr(np.broadcast_to(mixture, references.shape), references)
    power_separated = (aligned**2).mean(-1)
    power_sources = (references**2).mean(-1)
    active_refs = np.sqrt(power_sources) > 1e-8
    if active_refs.any():
        active_seps = power_separated > 0.01 * power_sources[active_refs].min()
    else:  # evaluate_lib's reduce_min of an empty set is +inf: no estimate is active
        active_seps = np.zeros(num, dtype=bool)
    active_pairs = active_refs & active_seps
    n_refs, n_seps = int(active_refs.sum()), int(active_seps.sum())
    perm = np.empty(num, dtype=np.int64)
    perm[best] = np.arange(num)  # estimate best[i] is aligned to slot i
    return {
        "perm": tuple(perm.tolist()),
        "si_snr": si_snr,
        "si_snr_mixture": si_snr_mixture,
        "si_snri": si_snr - si_snr_mixture,
        "power_sources": power_sources,
        "power_separated": power_separated,
        "active_refs": active_refs,
        "active_seps": active_seps,
        "active_pairs": active_pairs,
        "num_active_refs": n_refs,
        "num_active_seps": n_seps,
        "num_active_pairs": int(active_pairs.sum()),
        "under": n_seps < n_refs,
        "equal": n_seps == n_refs,
        "over": n_seps > n_refs,
    }


def fuss_row(estimates: np.ndarray, references: np.ndarray, mixture: np.ndarray) -> dict[str, Any]:
    """One flat per-mixture record of :func:`fuss_example_scores` (the per-run parquet row):
    per-slot ``si_snr_s{i}``, ``si_snri_s{i}``, ``active_ref_s{i}``, ``active_sep_s{i}``
    (i = 1..S), the counts, ``under``/``equal``/``over`` (0/1), and per-example conveniences
    ``fuss_1s`` / ``fuss_{2,3,4}si`` (mean over the example's active pairs, NaN for other
    counts) and ``fuss_msi``. Pooled values come from :func:`fuss_summary`."""
    out = fuss_example_scores(estimates, references, mixture)
    row: dict[str, Any] = {}
    for i in range(references.shape[0]):
        row[f"si_snr_s{i + 1}"] = float(out["si_snr"][i])
        row[f"si_snri_s{i + 1}"] = float(out["si_snri"][i])
        row[f"active_ref_s{i + 1}"] = bool(out["active_refs"][i])
        row[f"active_sep_s{i + 1}"] = bool(out["active_seps"][i])
    n = out["num_active_refs"]
    pairs = out["active_pairs"]
    row["num_active_refs"] = n
    row["num_active_seps"] = out["num_active_seps"]
    row["num_active_pairs"] = out["num_active_pairs"]
    for name in ("under", "equal", "over"):
        row[name] = float(out[name]) if n > 0 else np.nan
    mean_snr = float(out["si_snr"][pairs].mean()) if pairs.any() else np.nan
    mean_snri = float(out["si_snri"][pairs].mean()) if pairs.any() else np.nan
    row["fuss_1s"] = mean_snr if n == 1 else np.nan
    for count in range(2, MAX_SOURCES + 1):
        row[f"fuss_{count}si"] = mean_snri if n == count else np.nan
    row["fuss_msi"] = mean_snri if n >= 2 else np.nan
    row["perm"] = ",".join(map(str, out["perm"]))
    return row


def fuss_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """Pool per-example FUSS rows (:func:`fuss_row`) as ``evaluate_lib.evaluate`` does.

    Returns:
        ``fuss_1s``, ``fuss_2si``, ``fuss_3si``, ``fuss_4si``, ``fuss_msi`` (dB, means over the
        active (reference, estimate) pairs of the examples with that many active references;
        NaN where there are none), their ``*_std`` and ``*_n`` (number of pooled sources),
        ``under``, ``equal``, ``over`` (fractions of examples) and ``fuss_skipped`` (examples
        with only silent references, left out as in ``evaluate_lib``).
    """
    slots = sorted(int(c[len("si_snr_s") :]) for c in rows.columns if c.startswith("si_snr_s"))
    per_count: dict[int, dict[str, list[float]]] = {
        c: {"snr": [], "snri": []} for c in range(1, MAX_SOURCES + 1)
    }
    for _, row in rows.iterrows():
        n = int(row["num_active_refs"])
        if n == 0:
            continue
        for i in slots:
            if row[f"active_ref_s{i}"] and row[f"active_sep_s{i}"]:
                per_count[n]["snr"].append(float(row[f"si_snr_s{i}"]))
                per_count[n]["snri"].append(float(row[f"si_snri_s{i}"]))

    def stats(name: str, values: list[float]) -> dict[str, Any]:
        arr = np.asarray(values, dtype=np.float64)
        mean = float(arr.mean()) if arr.size else float("nan")
        std = float(arr.std()) if arr.size else float("nan")
        return {name: mean, f"{name}_std": std, f"{name}_n": int(arr.size)}

    out: dict[str, Any] = {}
    out.update(stats("fuss_1s", per_count[1]["snr"]))
    for count in range(2, MAX_SOURCES + 1):
        out.update(stats(f"fuss_{count}si", per_count[count]["snri"]))
    pooled = [v for c in range(2, MAX_SOURCES + 1) for v in per_count[c]["snri"]]
    out.update(stats("fuss_msi", pooled))
    valid = rows[rows["num_active_refs"] > 0]
    for name in ("under", "equal", "over"):
        out[name] = float(valid[name].mean()) if len(valid) else float("nan")
    out["fuss_skipped"] = int((rows["num_active_refs"] == 0).sum())
    return out
