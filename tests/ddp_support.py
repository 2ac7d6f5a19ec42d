"""Helpers for tests that spawn gloo process groups: a free port, the torchrun environment, and a clean end."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, size: int, port: int) -> None:
    """The environment torchrun gives rank ``rank`` of ``size``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank))


def end_rank() -> None:
    """End a spawned rank once its results are written: both ranks leave the group together, then the process
    exits without the interpreter's teardown, where gloo's threads can abort it (SIGABRT, "terminate called without
    an active exception": a known torch teardown race, which failed one CI run after every result was written and
    says nothing of what the test checks)."""
    import torch.distributed as dist

    from nas.train.distributed import leave_process_group

    dist.barrier()
    leave_process_group()
    os._exit(0)
