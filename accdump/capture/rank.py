"""Which rank this process is, and how many there are."""

from __future__ import annotations

import os


def rank_and_world() -> tuple[int, int]:
    """torch.distributed's rank and world size when initialised, else RANK / LOCAL_RANK and
    WORLD_SIZE from the environment (torchrun sets them), else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except (ImportError, RuntimeError):
        pass
    env = os.environ
    rank = env.get("RANK", env.get("LOCAL_RANK", "0"))
    world = env.get("WORLD_SIZE", env.get("LOCAL_WORLD_SIZE", "1"))
    return int(rank), int(world)
