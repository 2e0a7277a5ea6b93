"""The interface every separation method implements.

The runner knows methods only through this class: it builds one, gives it the trained teacher
run it asked for (``teacher_method``), calls :meth:`Method.train_step` in a loop that handles
checkpoints, and calls :meth:`Method.separate` on the fixed evaluation set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from benchmark.config import RunConfig
from tasks.base import Task

__all__ = ["Method", "drop_compiled", "make_optimizer", "optimize"]


class Method(ABC):
    """A separation method.

    Class attributes:
        name: registered name (``--methods``).
        display_name: row label in tables (SURF Table 1 wording).
        unsupervised: trains from mixtures alone.
        generative: samples from a learned distribution (flow / diffusion).
        teacher_method: name of the method whose trained run this one starts from (``"mixit"``
            for the remixing methods), or None. The teacher's address enters this method's
            run hash.
        config_schema: the config sections this method owns, by name: dataclasses whose
            defaults are the paper's values, with their checks declared by
            :func:`benchmark.config.param` (e.g. ``{"mixit": MixITConfig}``). Their preset
            values live in the YAML file beside the module (``methods/mixit.yaml``).
        config_sections: the sections that define this method's runs (its own and those it
            reads, e.g. SURF reads its teacher's ``mixit``); only these enter the run's hash.
            ``"net"`` stands for the network section of the task's modality (``net`` for
            images, ``audio_net`` for audio).
        presets_file: the YAML file of preset values, relative to the module (default: the
            module's own name with ``.yaml``, when that file exists).
        paper_numbers: a CSV of the method's published numbers, relative to the module, in
            the format of ``results/paper/*.csv`` (shown beside ours in the tables), or None.
        reference_only: not a trainable method (the ``mixture`` reference row).
    """

    name: ClassVar[str]
    display_name: ClassVar[str]
    unsupervised: ClassVar[bool] = True
    generative: ClassVar[bool] = False
    teacher_method: ClassVar[str | None] = None
    config_schema: ClassVar[dict[str, type]] = {}
    config_sections: ClassVar[tuple[str, ...]] = ("task", "train", "net", "eval")
    presets_file: ClassVar[str | None] = None
    paper_numbers: ClassVar[str | None] = None
    reference_only: ClassVar[bool] = False

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Checks that involve several sections (e.g. MixCycle pairs the batch, so
        ``train.batch_size`` must be even); called once per resolved config, before any job.

        Raises:
            benchmark.config.ConfigError: naming the setting and the fix.
        """
        del config  # nothing to check by default

    def __init__(self, config: RunConfig, task: Task, device: torch.device) -> None:
        self.config = config
        self.task = task
        self.device = device
        self.optimizer: torch.optim.Optimizer | None = None

    # -- construction --------------------------------------------------------------------
    @abstractmethod
    def setup(self, teacher: Method | None) -> None:
        """Build networks and optimizer; ``teacher`` is the trained ``teacher_method`` run
        (already loaded, in eval mode) or None."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every network whose weights are checkpointed, by name (e.g. student, ema)."""

    def trainable(self) -> nn.Module | None:
        """The network updated by the optimizer (for gradient clipping), or None."""
        return None

    def extra_state(self) -> dict[str, Any]:
        """Method state besides networks and optimizer to checkpoint (default: none)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state` (default: nothing to restore)."""
        del state

    # -- training ------------------------------------------------------------------------
    @abstractmethod
    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float | Tensor]:
        """One optimisation step (the method's algorithm box). Returns logged scalars: Python
        floats or 0-d tensors, which the training loop reads to the host only when it records
        the curve (``train.log_every``), so that a step does not wait for the device; the key
        ``"loss"`` is checked for NaN/inf then (and before every checkpoint)."""

    # -- inference -----------------------------------------------------------------------
    @abstractmethod
    def separate(self, mixtures: Tensor, generator: torch.Generator) -> Tensor:
        """Separate ``(B, *D)`` mixtures into ``(B, K, *D)`` source estimates (model scale)."""

    def eval_mode(self) -> None:
        """Put every network in eval mode."""
        for module in self.modules().values():
            module.eval()

    def train_mode(self) -> None:
        """Put trainable networks in train mode (EMA/frozen networks stay in eval)."""
        net = self.trainable()
        if net is not None:
            net.train()

    # -- acceleration (train.autocast, train.compile; off by default) ----------------------
    def call_net(self, network: nn.Module, *args: Tensor) -> Tensor:
        """``network(*args)``, under ``torch.autocast`` with bfloat16 when
        ``train.autocast = "bf16"``; the output is then cast back to the dtype of ``args[0]``,
        so that every loss is computed in full precision. With autocast off this is exactly
        ``network(*args)``."""
        if self.config.train.autocast != "bf16":
            return network(*args)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = network(*args)
        return out.to(args[0].dtype)

    def compile_networks(self) -> None:
        """Compile every network of :meth:`modules` in place (``nn.Module.compile``: state
        dicts and checkpoints are unchanged) when ``train.compile`` is not ``"off"``. Called at
        the end of ``setup``, after every copy (EMA) has been made: a compiled module must not
        be deep-copied (the copy would call the original; see :func:`drop_compiled`)."""
        mode = self.config.train.compile
        if mode == "off":
            return
        for module in self.modules().values():
            if mode == "aot_eager":
                module.compile(backend="aot_eager")
            else:
                module.compile(mode=mode)


def drop_compiled(module: nn.Module) -> nn.Module:
    """Remove ``nn.Module.compile``'s compiled call from ``module`` and its children, in place
    (for a deep copy of a compiled network, whose compiled call still runs the original)."""
    for child in module.modules():
        child._compiled_call_impl = None
    return module


def make_optimizer(parameters, lr: float) -> torch.optim.Optimizer:
    """Adam (SURF Algorithm 2 line 21: "Update Student via SGD/Adam"); the training loop sets
    the learning rate each step (warm-up)."""
    return torch.optim.Adam(parameters, lr=lr)


def optimize(method: Method, loss: Tensor) -> Tensor | float:
    """``theta <- theta - eta grad L``: zero grads, backward, clip (``train.grad_clip``), step.

    Returns:
        The gradient norm before clipping, a 0-d tensor left on the device (not read to the
        host here); 0.0 when clipping is disabled.
    """
    assert method.optimizer is not None
    method.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = 0.0
    clip = method.config.train.grad_clip
    net = method.trainable()
    if clip > 0 and net is not None:
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip).detach()
    method.optimizer.step()
    return norm
