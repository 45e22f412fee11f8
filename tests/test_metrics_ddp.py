"""ReferringMetrics under DDP: two CPU processes (gloo) merge to the one-process result."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from entitwist.metrics import ReferringMetrics


def _batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in (3, 1, 4, 2, 5):  # uneven batches, so ranks see different counts
        t = torch.rand(b, 12, 10, generator=g) < 0.4
        noise = torch.rand(b, 12, 10, generator=g) < 0.3
        out.append((t ^ noise, t))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, result_file: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metric = ReferringMetrics()
        # rank 0 takes batches 0, 2, 4 and rank 1 takes 1, 3: unequal numbers of expressions
        for i, (p, t) in enumerate(_batches()):
            if i % world == rank:
                metric.update(p, t)
        result = {k: float(v) for k, v in metric.compute().items()}
        if rank == 0:
            torch.save(result, result_file)
    finally:
        dist.destroy_process_group()


def test_two_process_merge_equals_single_process(tmp_path):
    single = ReferringMetrics()
    for p, t in _batches():
        single.update(p, t)
    want = {k: float(v) for k, v in single.compute().items()}

    result_file = str(tmp_path / "merged.pt")
    mp.spawn(_worker, args=(2, _free_port(), result_file), nprocs=2, join=True)
    got = torch.load(result_file, weights_only=True)
    assert got == want  # exact: per-expression counts are concatenated, not averaged
    # a rank's own result differs from the merged one (the test would notice no sync)
    rank0 = ReferringMetrics()
    for i, (p, t) in enumerate(_batches()):
        if i % 2 == 0:
            rank0.update(p, t)
    assert {k: float(v) for k, v in rank0.compute().items()} != want
