"""Device, precision, seeding and the process group: what a training run needs to know about where it runs.

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; without them the run is one process. The backend is
NCCL on CUDA and gloo on CPU. Only rank 0 (``Dist.main``) writes anything; the others train and wait.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as tdist

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
# rank 0 evaluates the selection split between epochs while the others wait in the next collective; the
# default 10-minute timeout would kill a run whose evaluation of a large split takes longer
GROUP_TIMEOUT = datetime.timedelta(minutes=120)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``. ``auto`` takes this process's GPU when there is one;
    under torchrun each process takes the GPU of its local rank."""
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise SystemExit(f"LOCAL_RANK {local_rank} but only {count} CUDA devices: lower --nproc")
        return torch.device("cuda", local_rank)
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {spec}: no CUDA device is available (use --device cpu or auto)")
        index = int(spec.split(":", 1)[1]) if ":" in spec else local_rank
        return torch.device("cuda", index)
    raise SystemExit(f"--device must be auto, cpu, cuda or cuda:N, not {spec!r}")


def setup(device_spec: str = "auto") -> Dist:
    """The process group (when under torchrun) and this process's device."""
    rank, world, local = env_rank()
    device = resolve_device(device_spec, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(backend, timeout=GROUP_TIMEOUT)
        log.info("rank %d/%d on %s (%s)", rank, world, device, backend)
    return Dist(rank, world, local, device)


def teardown(dist: Dist) -> None:
    """All ranks leave together, so rank 0 can go on alone (calibration, export) after training."""
    if dist.active and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def seed_everything(seed: int, rank: int) -> None:
    """python, numpy and torch RNGs from ``seed + rank``: ranks draw different dropout masks and vision
    samples, and a rerun draws the same ones."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather(obj: Any, dist: Dist) -> list[Any]:
    """Every rank's ``obj`` (on every rank)."""
    if not dist.active:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, dist: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (decisions only rank 0 can make, such as early stopping)."""
    if not dist.active:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: float, dist: Dist) -> float:
    if not dist.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    return float(t.item()) / dist.world_size


def barrier(dist: Dist) -> None:
    if dist.active:
        tdist.barrier()


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass. bf16 also runs on CPU (how the tests reach the bf16 code);
    fp16 needs CUDA and a gradient scaler (``needs_scaler``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise SystemExit("--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_scaler(precision: Precision) -> bool:
    """fp16's narrow exponent underflows small gradients; bf16 has fp32's range and needs no scaling."""
    return precision == "fp16"


@contextlib.contextmanager
def no_sync(module: torch.nn.Module, skip: bool) -> Iterator[None]:
    """DDP's ``no_sync`` for accumulation micro-steps, a no-op for a plain module."""
    if skip and hasattr(module, "no_sync"):
        with module.no_sync():  # type: ignore[operator]
            yield
    else:
        yield
