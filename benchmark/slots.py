"""GPU slot pool for local execution: each concurrent job gets its own GPU.

With ``--executor local`` and several GPUs, the runner takes a free GPU index from the pool
for every job it starts and gives it back when the job ends; submitit starts the job with
``CUDA_VISIBLE_DEVICES=<that index>``, so inside the job the GPU is ``cuda:0`` and no two
concurrent jobs share a GPU. Jobs wait for a free slot when more are ready than GPUs exist.
"""

from __future__ import annotations

import os

__all__ = ["GpuSlots", "default_gpu_slots"]


class GpuSlots:
    """A pool of GPU indices (as the parent process numbers them).

    Args:
        gpus: the GPU indices to hand out, e.g. ``[0, 1, 2, 3]``.

    Raises:
        ValueError: empty or repeated indices.
    """

    def __init__(self, gpus: list[int]) -> None:
        if not gpus or len(set(gpus)) != len(gpus):
            raise ValueError(f"GPU slots must be distinct indices, got {gpus}")
        self.gpus = list(gpus)
        self.free = list(gpus)

    def acquire(self) -> int | None:
        """A free GPU index, or None when every GPU is in use."""
        return self.free.pop(0) if self.free else None

    def release(self, gpu: int) -> None:
        """Give ``gpu`` back to the pool."""
        if gpu in self.free or gpu not in self.gpus:
            raise ValueError(f"GPU {gpu} is not in use (pool {self.gpus}, free {self.free})")
        self.free.append(gpu)


def default_gpu_slots(device: str) -> list[int] | None:
    """The GPUs to share among local jobs: the physical indices in ``CUDA_VISIBLE_DEVICES``
    when set, else ``0 .. torch.cuda.device_count() - 1``; None (no pool) for ``cpu``, an
    explicit ``cuda:N``, a single GPU, or GPUs named by UUID."""
    if device not in ("auto", "cuda"):
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        try:
            return [int(x) for x in visible.split(",") if x.strip()][:count]
        except ValueError:
            return None
    return list(range(count))
