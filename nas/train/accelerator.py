"""Where training runs: the accelerator (``cpu`` or ``cuda``), its numeric precision and its CPU threads.

``resolve_accelerator("auto", "bf16", threads=None)`` checks what the user asked for against this machine and
returns an ``Accelerator``; everything that trains takes one (``nas.train.engine.Engine``). Thread pinning for ONNX
Runtime timing lives with ``nas.latency.device``; training uses the cores it is given (default: all of them).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch

from nas.errors import AcceleratorError
from nas.latency.remote_measure import cpu_model

ACCELERATORS = ("auto", "cpu", "cuda")
PRECISIONS = ("32", "bf16", "16-mixed")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16-mixed": torch.float16}


PER_CORE = 4  # threads or processes per usable core, at most: enough to repeat a run made with more threads


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_per_core(flag: str, value: int | None, what: str) -> None:
    """AcceleratorError when ``value`` (threads or processes) exceeds ``PER_CORE`` per core this process may use:
    more only starve the machine (a run made with more threads elsewhere can be repeated with up to that many)."""
    limit = PER_CORE * available_cores()
    if value is not None and value > limit:
        raise AcceleratorError(f"{flag} {value}: this process may use {available_cores()} CPU core(s), so at most "
                               f"{limit} {what} ({PER_CORE} per core); more only starve the machine")


@dataclass(frozen=True)
class Accelerator:
    kind: str = "cpu"  # cpu | cuda
    precision: str = "32"  # 32 | bf16 | 16-mixed (autocast; fp16 with a gradient scaler)
    threads: int = 1  # torch intra-op threads while training
    name: str = ""  # the CPU or GPU model

    def autocast(self):
        """The forward pass's autocast context (a no-op at full precision)."""
        if self.precision == "32":
            return nullcontext()
        return torch.autocast(self.kind, dtype=AUTOCAST_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (disabled, a pass-through, for fp32 and bf16)."""
        return torch.amp.GradScaler(self.kind, enabled=self.precision == "16-mixed")

    @contextmanager
    def threads_in_use(self, threads: int | None = None) -> Iterator[None]:
        """Train on ``threads`` (default: this accelerator's) torch threads, then restore the previous count."""
        before = torch.get_num_threads()
        torch.set_num_threads(threads or self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def to_dict(self) -> dict:
        """What config.json and report.json record."""
        return {"accelerator": self.kind, "accelerator_name": self.name, "precision": self.precision,
                "threads": self.threads}

    def describe(self) -> str:
        """One phrase for progress lines: ``cpu (2 threads, fp32)``."""
        precision = "fp32" if self.precision == "32" else self.precision
        return f"{self.kind} ({self.threads} thread{'s' if self.threads != 1 else ''}, {precision})"


def resolve_accelerator(accelerator: str = "auto", precision: str = "32", threads: int | None = None
                        ) -> Accelerator:
    """Check ``accelerator`` and ``precision`` against this machine; ``auto`` is cuda when a GPU is present.

    AcceleratorError when cuda is asked for without a GPU, the precision is unknown or the device cannot do it,
    or ``threads`` is below 1 or above ``PER_CORE`` per usable core.
    """
    if accelerator not in ACCELERATORS:
        raise AcceleratorError(f"--accelerator {accelerator!r}: use one of {', '.join(ACCELERATORS)}")
    if precision not in PRECISIONS:
        raise AcceleratorError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if threads is not None and threads < 1:
        raise AcceleratorError(f"--threads must be at least 1 (torch threads while training), got {threads}")
    check_per_core("--threads", threads, "torch threads")
    gpu = torch.cuda.is_available()
    if accelerator == "cuda" and not gpu:
        raise AcceleratorError("--accelerator cuda: no CUDA GPU is available here (torch "
                               f"{torch.__version__}); use --accelerator cpu or auto")
    kind = "cuda" if accelerator == "cuda" or (accelerator == "auto" and gpu) else "cpu"
    if kind == "cpu" and precision == "16-mixed":
        raise AcceleratorError("--precision 16-mixed needs a CUDA GPU (fp16 autocast with loss scaling); "
                               "use bf16 or 32 on the CPU")
    if kind == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise AcceleratorError(f"--precision bf16: {torch.cuda.get_device_name()} cannot do bfloat16; "
                               f"use 16-mixed or 32")
    name = torch.cuda.get_device_name() if kind == "cuda" else cpu_model()
    return Accelerator(kind, precision, threads or available_cores(), name)
