"""Run configuration: dataclasses, presets and ``--set key=value`` overrides.

A run is fully described by a :class:`RunConfig`. Presets fill it with values for a scale
(``smoke``, ``cpu``, ``paper``), per method where methods differ; ``--set`` overrides any field
by dotted path (``train.steps=500``, ``surf.ema_decay=0.99``, ``net.ch_mult=1,2,2``). A method
may be targeted alone with a ``method:`` prefix (``mixit:train.steps=3000``).

The identity of a run (its results-store address) is a hash of the config sections the method
actually reads (see ``Method.config_sections``), so changing ``surf.*`` never invalidates a MixIT
teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from benchmark import CODE_VERSION

__all__ = [
    "PRESETS",
    "AudioNetConfig",
    "BasisConfig",
    "ConfigError",
    "EvalConfig",
    "MixCycleConfig",
    "MixITConfig",
    "NetConfig",
    "PerceptualConfig",
    "RemixConfig",
    "RunConfig",
    "SupervisedConfig",
    "SurfConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "config_hash",
    "parse_overrides",
    "resolve_config",
    "task_modality",
    "to_dict",
]


class ConfigError(ValueError):
    """A preset, override or config value is invalid; the message says how to fix it."""


@dataclass
class TaskConfig:
    """Task settings.

    Attributes:
        name: registered task name (``mnist``, ``cifar10``).
        num_sources: K, sources per evaluation/training mixture.
        seed: task seed for the fixed evaluation set, independent of the method seed.
        eval_mixtures: number of evaluation mixtures (5,000 in SURF/BASIS).

    Audio tasks only (``tasks/audio.py``; ignored by the image tasks and left out of run
    hashes while at their defaults, so adding them changed no existing address):

    Attributes:
        sample_rate: Hz; 0 = the task's native rate (``fsdd2mix`` 8,000; ``libri2mix``,
            ``fuss``, ``libri_fuss`` 16,000).
        segment_s: training segment length in seconds; 0 = the task's default (``fsdd2mix``
            1.0, ``libri2mix`` 3.0, ``fuss`` and ``libri_fuss`` 10.0).
        eval_segment_s: evaluation segment length in seconds; 0 = the task's default
            (full-length ``libri2mix`` test mixtures; the others as ``segment_s``).
        librimix_mode: ``"min"`` or ``"max"`` (LibriMix's ``wav*/{min,max}`` folders).
        train_split: training split; "" = the task's default (``libri2mix`` ``train-360``,
            ``fuss`` ``train``).
        eval_split: evaluation split; "" = the task's default (``libri2mix`` ``test``,
            ``fuss`` ``eval``).
        snr_low_db: lower end of the speech-to-background SNR range of ``libri_fuss`` (dB).
        snr_high_db: upper end of that range (dB); SNRs are uniform in (low, high).
        si_sdr_zero_mean: remove the mean of reference and estimate before SI-SDR (the
            zero-mean variant); False = SURF D.2's formula as written.
    """

    name: str = "mnist"
    num_sources: int = 2
    seed: int = 1234
    eval_mixtures: int = 5000
    sample_rate: int = 0
    segment_s: float = 0.0
    eval_segment_s: float = 0.0
    librimix_mode: str = "min"
    train_split: str = ""
    eval_split: str = ""
    snr_low_db: float = -5.0
    snr_high_db: float = 15.0
    si_sdr_zero_mean: bool = False


@dataclass
class TrainConfig:
    """Optimisation settings (Adam).

    Attributes:
        steps: training iterations.
        batch_size: B, mixtures per iteration.
        lr: Adam learning rate.
        warmup_steps: linear learning-rate warm-up iterations.
        grad_clip: gradient-norm clip (0 disables).
        ckpt_every: iterations between checkpoints (also written on exit and at the end).
        log_every: iterations between training-curve records (the losses are read from the
            device only then).
        autocast: ``"off"`` or ``"bf16"``: the networks' forward passes (training, teacher
            solve, evaluation) under ``torch.autocast`` with bfloat16, their outputs cast back
            to float32 so that losses stay in full precision (:meth:`methods.base.Method.
            call_net`). Meant for CUDA; off by default, and changes results (README,
            "Performance").
        compile: ``"off"``, or a ``torch.compile`` mode for every network of the method
            (``"default"``, ``"reduce-overhead"``, which uses CUDA graphs, also for the teacher
            solve's network, ``"max-autotune"``), or ``"aot_eager"`` (graph capture without
            code generation, for checking). Off by default.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ckpt_every: int = 500
    log_every: int = 25
    autocast: str = "off"
    compile: str = "off"


@dataclass
class NetConfig:
    """NCSN++-style U-Net size (SURF Table 6 in ``paper``)."""

    nf: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16, 8)
    dropout: float = 0.1
    fourier_scale: float = 16.0


@dataclass
class AudioNetConfig:
    """Audio network sizes (SURF Appendix D.3, D.5), used instead of ``net`` on audio tasks.

    Conv-TasNet (Luo and Mesgarani 2019; the MixIT teacher and the regression methods' network),
    in the paper's notation; defaults are its best configuration (Table II: N = 512, L = 16,
    B = 128, H = 512, P = 3, X = 8, R = 3):

    Attributes:
        tasnet_n: N, encoder filters.
        tasnet_l: L, encoder filter length in samples (stride L / 2; must be even).
        tasnet_b: B, bottleneck (and skip) channels of the TCN.
        tasnet_h: H, channels inside a convolutional block.
        tasnet_p: P, depthwise kernel size.
        tasnet_x: X, blocks per repeat (dilations 1 .. 2^(X-1)).
        tasnet_r: R, repeats.
        flow_frame_ms: STFT frame length in ms of the time-frequency flow network (SURF
            Table 7: 20 ms).
        flow_hop_ms: STFT hop in ms (Table 7: 10 ms overlap of 20 ms frames).
        flow_compression: magnitude compression exponent (Table 7: 0.33).
        flow_bands: mel bands of the band-split front-end (Table 7: 80).
        flow_dim: feature embedding dimension (Table 7: 192 for Libri2Mix; Table 8: 384 for
            AudioSet, used for ``fuss`` and ``libri_fuss``).
        flow_blocks: number of blocks (Tables 7, 8: 6).
        flow_heads: attention heads.
        flow_time_kernel: kernel of the convolutional FFN along time (Table 7 BSJA: 5).
    """

    tasnet_n: int = 512
    tasnet_l: int = 16
    tasnet_b: int = 128
    tasnet_h: int = 512
    tasnet_p: int = 3
    tasnet_x: int = 8
    tasnet_r: int = 3
    flow_frame_ms: float = 20.0
    flow_hop_ms: float = 10.0
    flow_compression: float = 0.33
    flow_bands: int = 80
    flow_dim: int = 192
    flow_blocks: int = 6
    flow_heads: int = 4
    flow_time_kernel: int = 5


@dataclass
class MixITConfig:
    """MixIT settings (Wisdom et al. 2020; sparse/efficient MixIT 2021).

    Attributes:
        num_outputs: M separator outputs (4).
        loss: ``"mse"`` squared error (SURF D.4) or ``"snr"`` thresholded SNR (eq. 2).
        snr_max: SNR_max in dB for ``loss="snr"``.
        single_source_prob: probability that a reference mixture holds one image instead of K
            (0.5: mixtures of mixtures hold 2/3/4 images at 25/50/25 %, SURF D.4).
        assignment: how the mixing matrix is found: ``"exhaustive"`` search over all N^M
            binary matrices (eq. 1) or ``"efficient"`` least squares projected to the nearest
            binary matrix (eq. 3).
        sparsity: source-sparsity loss added to the MixIT loss: ``"none"``, ``"l1"`` (C_l1,
            eq. 5) or ``"l1_l2"`` (C_l1/l2, eq. 6).
        sparsity_weight: its weight (the paper's Table 1 uses 8 / 23 / 64 for M = 4 / 8 / 16).
        covariance_weight: weight of the covariance loss C_cov (eq. 7); 0 disables it.
    """

    num_outputs: int = 4
    loss: str = "mse"
    snr_max: float = 30.0
    single_source_prob: float = 0.5
    assignment: str = "exhaustive"
    sparsity: str = "none"
    sparsity_weight: float = 0.0
    covariance_weight: float = 0.0


@dataclass
class RemixConfig:
    """ReMixIT / Self-Remixing settings (SURF §2.3).

    Attributes:
        ema_decay: alpha of the EMA teacher update.
    """

    ema_decay: float = 0.999


@dataclass
class SurfConfig:
    """SURF settings (SURF §3, Algorithm 1, Appendix D.3).

    Attributes:
        ema_decay: alpha of the EMA teacher, ``theta_T <- alpha theta_T + (1 - alpha) theta``.
        beta: hybrid-teacher threshold: ``"linear"`` for the paper's schedule (1 -> 0 over
            ``beta_decay_steps``), or a constant in [0, 1] as a string or number (Table 9).
        beta_decay_steps: iterations of the linear beta decay (200k in the paper).
        euler_steps: Euler steps of the teacher sampler (5).
        noise_scale: sigma of the initial state's Gaussian (eq. 4 uses 1).
        noise_reference: ``"absolute"`` (sigma = ``noise_scale`` in data units) or
            ``"mixture_rms"`` (sigma = ``noise_scale * rms(m) / sqrt(K)`` per mixture, for audio
            corpora at file amplitude; :func:`methods.flow.noise_sigma`).
        t_sampling: ``"batch"`` (one t per iteration, as Algorithm 2 line 11 and Code Listing 1)
            or ``"sample"`` (one t per mixture).
        init_from_mixit: initialise student and EMA teacher from the MixIT network's
            shape-matching weights (everything but the input/output convolutions and the time
            embedding, which the regression network does not have). Image tasks only: on audio
            the MixIT network (Conv-TasNet) and the flow network share no layer, and the
            transfer is skipped with a logged note.
        flow_loss: reduction of the flow-matching residual: ``"mse"`` (mean squared error, SURF
            Code Listing 1), ``"log_mse"`` (the log of the velocity squared error per mixture,
            ``10 log10(mean(R^2) + 1e-8)`` averaged over mixtures, SURF D.5 following Scheibler
            et al. 2025), or ``"auto"``: ``log_mse`` on audio tasks, ``mse`` on images.
    """

    ema_decay: float = 0.999
    beta: str = "linear"
    beta_decay_steps: int = 200_000
    euler_steps: int = 5
    noise_scale: float = 1.0
    noise_reference: str = "absolute"
    t_sampling: str = "batch"
    init_from_mixit: bool = True
    flow_loss: str = "auto"


@dataclass
class SupervisedConfig:
    """Supervised regression reference (``supervised``; SURF §5.1).

    Trained on clean sources with the log-SNR PIT loss (SURF eq. 3) with the per-source loss
    ``l(x, x_hat) = 10 log10(||x - x_hat||^2 + tau ||x||^2)`` (:func:`methods.losses.log_mse`).

    Attributes:
        snr_max: ``SNR_max`` in dB of the soft threshold ``tau = 10^(-SNR_max / 10)`` (30 dB, the
            usual choice, as ``mixit.snr_max``): errors more than ``SNR_max`` dB below the
            reference's energy stop counting. ``inf`` gives ``tau = 0``, the literal §5.1 loss
            ``10 log10 ||x - x_hat||^2``.
    """

    snr_max: float = 30.0


@dataclass
class MixCycleConfig:
    """MixCycle settings (Karamatli and Kirbiz 2022, §III-B, Fig. 3).

    Attributes:
        mixpit_steps: the switch point: iterations ``0 .. mixpit_steps - 1`` train with MixPIT
            (Fig. 3, "if epoch <= I": initialisation with MixPIT), every later iteration with
            the MixCycle remix. The paper counts ``I = 50`` epochs (§IV-C), an epoch being one
            pass over its training set of observed mixtures; on Libri2Mix that is the first
            sixth or less of a run (Fig. 4: the jump at epoch 51 of the >= 300 shown). The image
            tasks draw mixtures on the fly and presets fix a step budget instead of epochs, so
            the presets keep that share: ``mixpit_steps`` is about ``train.steps / 6`` (``cpu``
            200 of 1,200; ``paper`` 33,000 of 200,000). The value is a step count and does not
            follow a later ``--set train.steps=...``.
    """

    mixpit_steps: int = 33_000


@dataclass
class BasisConfig:
    """BASIS (Jayaram and Thickstun 2020): NCSN noise levels and annealed Langevin separation.

    Defaults are the published values (BASIS §4 / Algorithm 1 with NCSN's schedule, Song and
    Ermon 2019 §4.2; the ``paper`` preset keeps them).

    Attributes:
        sigma_begin: sigma_1, the largest noise level (1.0; images in [0, 1]; data units, so
            on audio relative to the source scale: FSDD2Mix sources have unit variance).
        sigma_end: sigma_L, the smallest noise level (0.01).
        num_levels: L, geometric levels from sigma_1 to sigma_L (10), used both for training
            (denoising score matching) and for separation.
        steps_per_level: T, Langevin steps per level (100).
        epsilon: base step size; level i uses ``eta_i = epsilon sigma_i^2 / sigma_L^2``. 3e-5 is
            the value of the authors' released separation scripts (``step_lr=0.00003`` for MNIST
            and CIFAR-10 in github.com/jthickstun/basis-separation); we did not find the number
            in the paper's text, and NCSN's own sampler uses 2e-5.
        recon_weight: w, the mixture-likelihood gradient is ``w (m - sum_k x_k) / sigma_i^2``:
            1 is the Gaussian likelihood ``N(m; sum_k x_k, sigma_i^2 I)`` (and the authors'
            CIFAR-10 script); their MNIST script differentiates ``||m - g(x)||^2`` without the
            1/2, which is w = 2.
        dequantize: train on uniformly dequantised images ``x 255/256 + u/256``, u ~ U[0, 1), as
            the NCSN training code BASIS uses (image tasks only; waveforms are never
            dequantised).
        score_batch: at most this many images per score-network call during separation
            (memory; B K images are updated per Langevin step). Does not change the result
            beyond floating-point rounding.
    """

    sigma_begin: float = 1.0
    sigma_end: float = 0.01
    num_levels: int = 10
    steps_per_level: int = 100
    epsilon: float = 3e-5
    recon_weight: float = 1.0
    dequantize: bool = True
    score_batch: int = 1000


@dataclass
class EvalConfig:
    """Evaluation settings.

    Attributes:
        batch_size: mixtures per forward pass.
        model: which weights to evaluate for methods with an EMA teacher: ``"ema"`` (the EMA
            teacher theta_T) or ``"student"`` (theta).
        euler_steps: Euler steps when sampling a flow model (5).
    """

    batch_size: int = 250
    model: str = "ema"
    euler_steps: int = 5


@dataclass
class PerceptualConfig:
    """Perceptual image metrics (SURF Tables 1 and 2; ``tasks/perceptual.py``).

    Evaluation-only: this section is in no method's ``config_sections``, so it never changes a
    run's results-store address; the values used are recorded in ``metrics.json`` next to the
    numbers, and ``run`` re-evaluates a finished run (no retraining) when they change.

    Attributes:
        enabled: compute LPIPS, FID and IS on image tasks.
        fid_reference_images: clean test images in the FID reference set (all 10,000 of the
            test split in ``paper``; a random subset drawn with the task seed when smaller).
        table2_mixtures: extra mixtures separated for SURF Table 2 (IS and FID of their
            ``K x table2_mixtures`` separated images; 25,000 in the paper); 0 skips Table 2.
        isc_splits: Inception Score splits (10, the standard; reduced to the image count).
        batch_size: images per LPIPS / Inception forward pass.
    """

    enabled: bool = True
    fid_reference_images: int = 10_000
    table2_mixtures: int = 25_000
    isc_splits: int = 10
    batch_size: int = 200


@dataclass
class RunConfig:
    """Everything that defines one run (method x task x seed x settings)."""

    method: str = "mixit"
    seed: int = 0
    preset: str = "paper"
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    net: NetConfig = field(default_factory=NetConfig)
    audio_net: AudioNetConfig = field(default_factory=AudioNetConfig)
    mixit: MixITConfig = field(default_factory=MixITConfig)
    remix: RemixConfig = field(default_factory=RemixConfig)
    surf: SurfConfig = field(default_factory=SurfConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    mixcycle: MixCycleConfig = field(default_factory=MixCycleConfig)
    basis: BasisConfig = field(default_factory=BasisConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    teacher: str = ""  # hash of the MixIT run this run starts from ("" when none)
    overrides: tuple[str, ...] = ()  # the user's --set values, for labelling table rows


# --------------------------------------------------------------------------------------------
# Presets. Keys are dotted paths; "methods" holds per-method values on top of the common ones.
# --------------------------------------------------------------------------------------------

_SMOKE_NET = {
    "net.nf": 8,
    "net.ch_mult": (1, 2),
    "net.num_res_blocks": 1,
    "net.attn_resolutions": (),
    "net.dropout": 0.0,
}

# Audio network sizes per preset (``audio_net``; SURF D.3, D.5, Tables 7 and 8).
_SMOKE_AUDIO_NET = {
    "audio_net.tasnet_n": 16,
    "audio_net.tasnet_l": 16,
    "audio_net.tasnet_b": 16,
    "audio_net.tasnet_h": 32,
    "audio_net.tasnet_x": 2,
    "audio_net.tasnet_r": 1,
    "audio_net.flow_bands": 8,
    "audio_net.flow_dim": 16,
    "audio_net.flow_blocks": 1,
    "audio_net.flow_heads": 2,
}
_AUDIO_TASKS = ("fsdd2mix", "libri2mix", "fuss", "libri_fuss")
# SURF D.5: on audio, MixIT's mixtures of mixtures hold two regular mixtures (no single-source
# references); the MixIT loss is the thresholded SNR of Wisdom et al. (2020/2021)
_AUDIO_MIXIT = {"mixit.single_source_prob": 0.0, "mixit.loss": "snr"}

# Libri2Mix, FUSS and LibriSpeech + FUSS are read at file amplitude (source RMS of a few
# hundredths), so the flow's initial noise is set relative to each mixture's level
# (methods.flow.noise_sigma); FSDD2Mix's sources are standardized and keep sigma absolute.
_CORPUS_FLOW = {"surf.noise_reference": "mixture_rms"}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "description": "seconds per method on 2 CPU cores; exercises every code path (tests)",
        "common": {
            **_SMOKE_NET,
            "task.eval_mixtures": 32,
            "train.steps": 6,
            "train.batch_size": 8,
            "train.lr": 1e-3,
            "train.ckpt_every": 3,
            "train.log_every": 2,
            "eval.batch_size": 32,
            "surf.beta_decay_steps": 4,
            "surf.euler_steps": 2,
            "eval.euler_steps": 2,
            "remix.ema_decay": 0.9,
            "surf.ema_decay": 0.9,
            "perceptual.fid_reference_images": 32,
            "perceptual.table2_mixtures": 8,
        },
        "methods": {
            # half of the 6 steps, so that a smoke run goes through both MixCycle phases
            "mixcycle": {"mixcycle.mixpit_steps": 3},
            # 10 levels x 2 Langevin steps instead of 10 x 100
            "basis": {"basis.steps_per_level": 2},
        },
        "tasks": {
            **{
                name: {"common": {**_SMOKE_AUDIO_NET, **_AUDIO_MIXIT, "eval.batch_size": 16}}
                for name in _AUDIO_TASKS
            },
            # 1 s training and evaluation segments for the long-form corpora (3-10 s natively)
            **{
                name: {
                    "common": {
                        **_SMOKE_AUDIO_NET,
                        **_AUDIO_MIXIT,
                        "eval.batch_size": 16,
                        "task.segment_s": 1.0,
                        "task.eval_segment_s": 1.0,
                        "surf.noise_reference": "mixture_rms",
                    }
                }
                for name in ("libri2mix", "fuss", "libri_fuss")
            },
        },
    },
    "cpu": {
        "description": "a real but small run on 2 CPU cores (README: measured wall times)",
        "common": {
            "net.nf": 32,
            "net.ch_mult": (1, 2, 2),
            "net.num_res_blocks": 1,
            "net.attn_resolutions": (8,),
            "net.dropout": 0.0,
            "task.eval_mixtures": 500,
            "train.batch_size": 32,
            "train.lr": 1e-3,
            "train.warmup_steps": 50,
            "train.ckpt_every": 200,
            "train.log_every": 25,
            "eval.batch_size": 250,
            "remix.ema_decay": 0.99,
            "surf.ema_decay": 0.99,
            # Measured on MNIST (README, "Choosing the cpu defaults"): the thresholded-SNR MixIT
            # loss separates better than squared error at this scale (22.0 vs 19.8 dB PSNR),
            # and a flow noise scale of 0.3 beats 1.0 for SURF (18.2 vs 15.9 dB at 1,200 steps).
            "mixit.loss": "snr",
            "surf.noise_scale": 0.3,
            "perceptual.fid_reference_images": 1000,
            "perceptual.table2_mixtures": 500,
        },
        "methods": {
            "mixit": {"train.steps": 1200},
            "remixit": {"train.steps": 400},
            "self_remixing": {"train.steps": 400},
            "surf_rm": {"train.steps": 800, "surf.beta_decay_steps": 500},
            "surf_sr": {"train.steps": 800, "surf.beta_decay_steps": 500},
            # clean-source references (SURF Table 1 top rows): steps as the method they mirror
            "supervised": {"train.steps": 1200},
            "floss": {"train.steps": 800},
            "mixpit": {"train.steps": 1200},
            "mixcycle": {"train.steps": 1200, "mixcycle.mixpit_steps": 200},
            # BASIS: 3 instead of 100 Langevin steps per level, each one being a network pass
            # over all B K sources (README "BASIS" says why three still anneal)
            "basis": {"train.steps": 600, "basis.steps_per_level": 3},
        },
        "tasks": {
            # FSDD2Mix (1 s at 8 kHz); sized for the seven unsupervised methods on 2 CPU cores
            # (README, "Results at CPU scale": fsdd2mix)
            "fsdd2mix": {
                "common": {
                    **_AUDIO_MIXIT,
                    "audio_net.tasnet_n": 64,
                    "audio_net.tasnet_l": 32,
                    "audio_net.tasnet_b": 32,
                    "audio_net.tasnet_h": 64,
                    "audio_net.tasnet_x": 4,
                    "audio_net.tasnet_r": 2,
                    # 32 ms frames / 16 ms hop (Table 7: 20 / 10) and 8 bands: 4x fewer
                    # time-frequency tokens, so that a SURF step fits a CPU budget
                    "audio_net.flow_frame_ms": 32.0,
                    "audio_net.flow_hop_ms": 16.0,
                    "audio_net.flow_bands": 8,
                    "audio_net.flow_dim": 32,
                    "audio_net.flow_blocks": 2,
                    "audio_net.flow_heads": 4,
                    "task.eval_mixtures": 200,
                    "train.batch_size": 16,
                    "eval.batch_size": 50,
                    "surf.noise_scale": 1.0,
                },
                "methods": {
                    "mixit": {"train.steps": 250},
                    "mixpit": {"train.steps": 250},
                    "mixcycle": {"train.steps": 250, "mixcycle.mixpit_steps": 42},
                    "supervised": {"train.steps": 250},
                    "remixit": {"train.steps": 80},
                    "self_remixing": {"train.steps": 80},
                    "surf_rm": {
                        "train.steps": 150,
                        "train.batch_size": 8,
                        "surf.beta_decay_steps": 100,
                    },
                    "surf_sr": {
                        "train.steps": 150,
                        "train.batch_size": 8,
                        "surf.beta_decay_steps": 100,
                    },
                    "floss": {"train.steps": 150, "train.batch_size": 8},
                    # waveform score network at the Conv-TasNet sizes above: ~0.2 s per step
                    # of B = 16 on 2 CPU cores (measured), so ~3 min; 3 Langevin steps per level
                    # as on images (the cpu preset's basis entry)
                    "basis": {"train.steps": 1000},
                },
            },
        },
    },
    "paper": {
        "description": "SURF Table 6 / App. D (NCSN++ nf=64, 15.8M params, B=256, 5-step Euler)",
        "common": {
            "net.nf": 64,
            "net.ch_mult": (1, 2, 2, 2),
            "net.num_res_blocks": 4,
            "net.attn_resolutions": (16, 8),
            "net.dropout": 0.1,
            "task.eval_mixtures": 5000,
            "train.batch_size": 256,
            "train.lr": 2e-4,
            "train.warmup_steps": 5000,
            "train.ckpt_every": 5000,
            "train.log_every": 100,
            "eval.batch_size": 500,
            "remix.ema_decay": 0.999,
            "surf.ema_decay": 0.999,
            "surf.beta_decay_steps": 200_000,
        },
        "methods": {
            "mixit": {"train.steps": 200_000},
            "remixit": {"train.steps": 200_000},
            "self_remixing": {"train.steps": 200_000},
            "surf_rm": {"train.steps": 400_000},
            "surf_sr": {"train.steps": 400_000},
            "supervised": {"train.steps": 200_000},
            "floss": {"train.steps": 400_000},
            "mixpit": {"train.steps": 200_000},
            "mixcycle": {"train.steps": 200_000, "mixcycle.mixpit_steps": 33_000},
            "basis": {"train.steps": 200_000},  # BASIS / NCSN defaults (T = 100, L = 10)
        },
        # audio: Conv-TasNet at Luo and Mesgarani's best configuration and the flow network at
        # SURF Table 7 (embedding 192, Libri2Mix-sized) / Table 8 (384, AudioSet-sized, for FUSS
        # and LibriSpeech + FUSS); both are the AudioNetConfig defaults. SURF gives no audio
        # batch size: 16 segments per step is our choice (10 s FUSS segments at B = 256 do not
        # fit one GPU).
        "tasks": {
            "fsdd2mix": {
                "common": {**_AUDIO_MIXIT, "train.batch_size": 16, "eval.batch_size": 100}
            },
            "libri2mix": {
                "common": {
                    **_AUDIO_MIXIT,
                    **_CORPUS_FLOW,
                    "train.batch_size": 16,
                    "eval.batch_size": 1,
                }
            },
            "fuss": {
                "common": {
                    **_AUDIO_MIXIT,
                    **_CORPUS_FLOW,
                    "audio_net.flow_dim": 384,
                    "train.batch_size": 16,
                    "eval.batch_size": 8,
                }
            },
            "libri_fuss": {
                "common": {
                    **_AUDIO_MIXIT,
                    **_CORPUS_FLOW,
                    "audio_net.flow_dim": 384,
                    "train.batch_size": 16,
                    "eval.batch_size": 8,
                }
            },
        },
    },
}


# --------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> Any:
    """Plain JSON-able dict of a (nested) dataclass; tuples become lists."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Inverse of :func:`to_dict` for :class:`RunConfig`."""
    cfg = RunConfig()
    for key, value in data.items():
        if isinstance(value, dict):
            section = getattr(cfg, key)
            for sub_key, sub_value in value.items():
                _set_field(section, sub_key, sub_value, f"{key}.{sub_key}")
        else:
            _set_field(cfg, key, value, key)
    return cfg


def _field_type(obj: Any, name: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    return hints[name]


def _coerce(value: Any, typ: Any, path: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(typ) or (str,)
        if isinstance(value, str):
            parts = [p for p in value.replace("(", "").replace(")", "").split(",") if p.strip()]
        else:
            parts = list(value)
        return tuple(_coerce(p, item_type, path) for p in parts)
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ is int:
            if isinstance(value, str):
                return int(float(value)) if "e" in value.lower() else int(value)
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read {value!r} as {typ.__name__}") from exc
    return value


def _set_field(obj: Any, name: str, value: Any, path: str) -> None:
    valid = [f.name for f in fields(obj)]
    if name not in valid:
        raise ConfigError(f"unknown config field {path!r}; valid fields here: {valid}")
    setattr(obj, name, _coerce(value, _field_type(obj, name), path))


def set_path(cfg: RunConfig, path: str, value: Any) -> None:
    """Set a dotted config path, e.g. ``set_path(cfg, "train.steps", "500")``.

    Raises:
        ConfigError: unknown section or field (the message lists the valid ones) or a value
            that cannot be converted to the field's type.
    """
    parts = path.split(".")
    if len(parts) == 1:
        _set_field(cfg, parts[0], value, path)
        return
    if len(parts) != 2:
        raise ConfigError(f"config path {path!r} must look like section.field (e.g. train.steps)")
    section_name, name = parts
    sections = [f.name for f in fields(cfg) if is_dataclass(getattr(cfg, f.name))]
    if section_name not in sections:
        raise ConfigError(f"unknown config section {section_name!r}; valid sections: {sections}")
    _set_field(getattr(cfg, section_name), name, value, path)


def parse_overrides(items: list[str] | tuple[str, ...]) -> list[tuple[str | None, str, str]]:
    """Parse ``--set`` items ``[method:]section.field=value`` into triples.

    Raises:
        ConfigError: an item without ``=``.
    """
    parsed = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.steps=500")
        key, value = item.split("=", 1)
        method = None
        if ":" in key:
            method, key = key.split(":", 1)
        parsed.append((method, key.strip(), value.strip()))
    return parsed


def apply_overrides(cfg: RunConfig, overrides: list[tuple[str | None, str, str]]) -> None:
    """Apply parsed overrides to ``cfg`` in place (method-prefixed ones only to that method)."""
    for method, key, value in overrides:
        if method is None or method == cfg.method:
            set_path(cfg, key, value)


def resolve_config(
    method: str,
    task: str,
    seed: int,
    preset: str,
    overrides: list[tuple[str | None, str, str]] | None = None,
) -> RunConfig:
    """Build the :class:`RunConfig` of one run: defaults, then preset, then overrides.

    Raises:
        ConfigError: unknown preset (the message lists the valid ones) or bad override.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {sorted(PRESETS)}")
    cfg = RunConfig(method=method, seed=seed, preset=preset)
    cfg.task.name = task
    spec = PRESETS[preset]
    for key, value in spec["common"].items():
        set_path(cfg, key, value)
    for key, value in spec["methods"].get(method, {}).items():
        set_path(cfg, key, value)
    # per-task layer (audio tasks differ in segment, batch, steps, network sizes)
    task_spec = spec.get("tasks", {}).get(task, {})
    for key, value in task_spec.get("common", {}).items():
        set_path(cfg, key, value)
    for key, value in task_spec.get("methods", {}).get(method, {}).items():
        set_path(cfg, key, value)
    overrides = overrides or []
    apply_overrides(cfg, overrides)
    cfg.overrides = tuple(
        f"{key}={value}" for m, key, value in overrides if m is None or m == method
    )
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Check value ranges; raise :class:`ConfigError` with the fix."""
    if cfg.train.steps < 0:
        raise ConfigError(f"train.steps must be >= 0, got {cfg.train.steps}")
    if cfg.train.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {cfg.train.batch_size}")
    if cfg.train.autocast not in ("off", "bf16"):
        raise ConfigError(f"train.autocast must be 'off' or 'bf16', got {cfg.train.autocast!r}")
    compile_modes = ("off", "default", "reduce-overhead", "max-autotune", "aot_eager")
    if cfg.train.compile not in compile_modes:
        raise ConfigError(
            f"train.compile must be one of {', '.join(compile_modes)}, got {cfg.train.compile!r}"
        )
    for name in ("remix", "surf"):
        alpha = getattr(cfg, name).ema_decay
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"{name}.ema_decay (alpha) must be in [0, 1], got {alpha}")
    if cfg.surf.beta != "linear":
        try:
            beta = float(cfg.surf.beta)
        except ValueError as exc:
            raise ConfigError(
                f"surf.beta must be 'linear' or a number in [0, 1], got {cfg.surf.beta!r}"
            ) from exc
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"surf.beta must be in [0, 1], got {beta}")
    if cfg.surf.t_sampling not in ("batch", "sample"):
        raise ConfigError(f"surf.t_sampling must be 'batch' or 'sample', got {cfg.surf.t_sampling}")
    if cfg.surf.flow_loss not in ("auto", "mse", "log_mse"):
        raise ConfigError(
            f"surf.flow_loss must be 'auto', 'mse' or 'log_mse', got {cfg.surf.flow_loss!r}"
        )
    if cfg.surf.noise_reference not in ("absolute", "mixture_rms"):
        raise ConfigError(
            "surf.noise_reference must be 'absolute' or 'mixture_rms', got "
            f"{cfg.surf.noise_reference!r}"
        )
    if cfg.eval.model not in ("ema", "student"):
        raise ConfigError(f"eval.model must be 'ema' or 'student', got {cfg.eval.model!r}")
    if cfg.mixit.loss not in ("mse", "snr"):
        raise ConfigError(f"mixit.loss must be 'mse' or 'snr', got {cfg.mixit.loss!r}")
    if not cfg.supervised.snr_max > 0:  # also rejects NaN
        raise ConfigError(
            f"supervised.snr_max must be > 0 dB (inf: no threshold), got {cfg.supervised.snr_max}"
        )
    if cfg.mixcycle.mixpit_steps < 0:
        raise ConfigError(f"mixcycle.mixpit_steps must be >= 0, got {cfg.mixcycle.mixpit_steps}")
    if cfg.method == "mixcycle" and cfg.train.batch_size % 2:
        raise ConfigError(
            "mixcycle pairs the observed mixtures of a batch (Fig. 3): train.batch_size must be "
            f"even, got {cfg.train.batch_size}"
        )
    _validate_mixit_options(cfg.mixit)
    _validate_perceptual(cfg.perceptual)
    _validate_audio_task(cfg.task)
    _validate_basis(cfg.basis)


def _validate_perceptual(perceptual: PerceptualConfig) -> None:
    """Counts of the perceptual metrics (FID needs at least 2 reference images)."""
    if perceptual.fid_reference_images < 2:
        raise ConfigError(
            f"perceptual.fid_reference_images must be >= 2, got {perceptual.fid_reference_images}"
        )
    for name in ("table2_mixtures", "isc_splits", "batch_size"):
        value = getattr(perceptual, name)
        if value < (0 if name == "table2_mixtures" else 1):
            raise ConfigError(f"perceptual.{name} must be positive, got {value}")


def _validate_audio_task(task: TaskConfig) -> None:
    """The audio-task fields of :class:`TaskConfig` (``tasks/audio.py``)."""
    if task.librimix_mode not in ("min", "max"):
        raise ConfigError(f"task.librimix_mode must be 'min' or 'max', got {task.librimix_mode!r}")
    if task.sample_rate < 0:
        raise ConfigError(f"task.sample_rate must be >= 0 Hz (0: native), got {task.sample_rate}")
    for name in ("segment_s", "eval_segment_s"):
        value = getattr(task, name)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"task.{name} must be >= 0 s (0: task default), got {value}")
    if not task.snr_low_db < task.snr_high_db:
        raise ConfigError(
            f"task.snr_low_db must be below task.snr_high_db, got {task.snr_low_db} and "
            f"{task.snr_high_db}"
        )


def _validate_basis(basis: BasisConfig) -> None:
    """Noise levels and Langevin settings of BASIS."""
    if not 0.0 < basis.sigma_end <= basis.sigma_begin:
        raise ConfigError(
            "basis.sigma_end and basis.sigma_begin need 0 < sigma_end <= sigma_begin, got "
            f"sigma_begin={basis.sigma_begin}, sigma_end={basis.sigma_end}"
        )
    if basis.num_levels < 1 or (basis.num_levels == 1 and basis.sigma_begin != basis.sigma_end):
        raise ConfigError(
            f"basis.num_levels must be >= 2 (or 1 with sigma_begin == sigma_end), got "
            f"{basis.num_levels}"
        )
    if basis.steps_per_level < 1:
        raise ConfigError(f"basis.steps_per_level must be >= 1, got {basis.steps_per_level}")
    if not (math.isfinite(basis.epsilon) and basis.epsilon > 0):
        raise ConfigError(f"basis.epsilon must be a finite number > 0, got {basis.epsilon}")
    if not (math.isfinite(basis.recon_weight) and basis.recon_weight >= 0):
        raise ConfigError(f"basis.recon_weight must be >= 0, got {basis.recon_weight}")
    if basis.score_batch < 1:
        raise ConfigError(f"basis.score_batch must be >= 1, got {basis.score_batch}")


def _validate_mixit_options(mixit: MixITConfig) -> None:
    """The efficient-assignment, sparsity and covariance options (sparse/efficient MixIT)."""
    if mixit.assignment not in ("exhaustive", "efficient"):
        raise ConfigError(
            f"mixit.assignment must be 'exhaustive' or 'efficient', got {mixit.assignment!r}"
        )
    if mixit.assignment == "exhaustive" and mixit.num_outputs >= 1:
        # the table of the 2^M mixing matrices must fit in memory (here; checked again on the
        # run's device when it trains): refused with the fix in the message
        from methods.mixit_assignment import check_exhaustive_fits

        try:
            check_exhaustive_fits(2, mixit.num_outputs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if mixit.sparsity not in ("none", "l1", "l1_l2"):
        raise ConfigError(f"mixit.sparsity must be 'none', 'l1' or 'l1_l2', got {mixit.sparsity!r}")
    for name in ("sparsity_weight", "covariance_weight"):
        weight = getattr(mixit, name)
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"mixit.{name} must be a finite number >= 0, got {weight}")
    if mixit.sparsity == "none" and mixit.sparsity_weight > 0:
        raise ConfigError(
            f"mixit.sparsity_weight={mixit.sparsity_weight} has no effect with "
            "mixit.sparsity=none: also set mixit.sparsity=l1 or mixit.sparsity=l1_l2"
        )


# Fields added after runs were stored: left out of a run's identity while at these defaults, so
# that adding an option does not change the address of any run made without it.
_IDENTITY_OMIT_AT_DEFAULT: dict[str, dict[str, Any]] = {
    "train": {"autocast": "off", "compile": "off"},
    "task": {
        "sample_rate": 0,
        "segment_s": 0.0,
        "eval_segment_s": 0.0,
        "librimix_mode": "min",
        "train_split": "",
        "eval_split": "",
        "snr_low_db": -5.0,
        "snr_high_db": 15.0,
        "si_sdr_zero_mean": False,
    },
    "mixit": {
        "assignment": "exhaustive",
        "sparsity": "none",
        "sparsity_weight": 0.0,
        "covariance_weight": 0.0,
    },
    "surf": {"flow_loss": "auto", "noise_reference": "absolute"},
}


def task_modality(task_name: str) -> str:
    """``"audio"`` or ``"image"``: the registered task's ``modality`` (``"image"`` for tasks
    without one or unknown names)."""
    from benchmark.registry import get_task  # late import: the registry imports methods

    try:
        return getattr(get_task(task_name), "modality", "image")
    except KeyError:
        return "image"


def _network_section(cfg: RunConfig, sections: tuple[str, ...]) -> tuple[str, ...]:
    """On audio tasks the ``net`` section (U-Net sizes, unused) is replaced by ``audio_net`` in
    a run's identity; image runs keep exactly the sections they always had."""
    if "net" in sections and task_modality(cfg.task.name) == "audio":
        return tuple("audio_net" if name == "net" else name for name in sections)
    return sections


def identity_dict(cfg: RunConfig, sections: tuple[str, ...]) -> dict[str, Any]:
    """The part of a config that defines a run's identity (method, seed, listed sections).

    Fields of :data:`_IDENTITY_OMIT_AT_DEFAULT` are left out while at their default. On audio
    tasks ``audio_net`` stands in for ``net`` (:func:`_network_section`).
    """
    data = {"code_version": CODE_VERSION, "method": cfg.method, "seed": cfg.seed}
    for name in _network_section(cfg, sections):
        section = to_dict(getattr(cfg, name))
        for key, default in _IDENTITY_OMIT_AT_DEFAULT.get(name, {}).items():
            if section.get(key) == default:
                del section[key]
        data[name] = section
    return data


def config_hash(cfg: RunConfig, sections: tuple[str, ...]) -> str:
    """Stable 16-hex-digit hash of :func:`identity_dict` (the results-store address)."""
    blob = json.dumps(identity_dict(cfg, sections), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def replace(cfg: RunConfig, **changes: Any) -> RunConfig:
    """Deep copy of ``cfg`` with top-level fields replaced."""
    new = from_dict(to_dict(cfg))
    for key, value in changes.items():
        setattr(new, key, value)
    return dataclasses.replace(new)
