"""Selective scan: the project's chunked scan vs the plain sequential loop, on CPU.

Measures forward + backward time and peak memory of

- ``loop``: the scan written the natural way, one step per position over ``unbind`` slices,
  states collected in a list and ``torch.stack``-ed, autograd for the backward;
- ``chunked``: :func:`entitwist.ops.selective_scan_fn` (CPU path: chunked scan with the
  hand-written adjoint backward),

both with Mamba's full options (variable B and C, D, z gating, delta_bias, softplus) on the
same seeded inputs. Every measurement runs in a fresh subprocess (so neither sees the other's
allocator state), alternating loop / chunked for ``--reps`` rounds; the table gives medians.
Peak memory is the subprocess's peak resident set size (``ru_maxrss``) minus its resident size
just before the scan, i.e. what the scan itself adds on top of its inputs. The subprocesses
also report output and gradient norms, checked to agree between the two.

Usage::

    python benchmarks/bench_scan.py            # stage-4 channel scan: batch 8, D 512, L 2048, N 16
    python benchmarks/bench_scan.py --small    # quick dry run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scan.md"


def _rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def loop_scan(u, delta, A, B, C, D, z, delta_bias):
    """The sequential loop written naturally: unbind over L, a list of states, stack."""
    import torch
    import torch.nn.functional as F

    delta = F.softplus(delta + delta_bias[:, None])  # (b, D, L)
    delta_a = torch.exp(delta[..., None] * A[:, None])  # (b, D, L, N)
    delta_b_u = (delta * u)[..., None] * B.transpose(1, 2)[:, None]  # (b, D, L, N)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (b, D, N)
    states = []
    for a_t, x_t in zip(delta_a.unbind(2), delta_b_u.unbind(2)):
        h = a_t * h + x_t
        states.append(h)
    hs = torch.stack(states, dim=2)  # (b, D, L, N)
    y = (hs * C.transpose(1, 2)[:, None]).sum(-1)  # (b, D, L)
    return (y + u * D[:, None]) * F.silu(z)


def worker(impl: str, batch: int, dim: int, length: int, dstate: int, threads: int) -> dict:
    """One timed forward + backward in this (fresh) process; returns timings and memory."""
    import torch

    from entitwist.ops import selective_scan_fn

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, dim, length, generator=g)
    delta = 0.1 * torch.randn(batch, dim, length, generator=g)
    A = -torch.arange(1, dstate + 1, dtype=torch.float32).repeat(dim, 1)  # Mamba's init
    B = torch.randn(batch, dstate, length, generator=g)
    C = torch.randn(batch, dstate, length, generator=g)
    D = torch.ones(dim)
    z = torch.randn(batch, dim, length, generator=g)
    log_lo, log_hi = math.log(1e-3), math.log(1e-1)  # Mamba's dt init: log-uniform
    dt = torch.exp(torch.rand(dim, generator=g) * (log_hi - log_lo) + log_lo).clamp(min=1e-4)
    delta_bias = dt + torch.log(-torch.expm1(-dt))
    inputs = [t.requires_grad_() for t in (u, delta, A, B, C, D, z, delta_bias)]
    grad_out = torch.randn(batch, dim, length, generator=g)

    def run(tensors: list) -> torch.Tensor:
        if impl == "loop":
            return loop_scan(*tensors)
        return selective_scan_fn(*tensors[:5], *tensors[5:], delta_softplus=True)

    # Warm-up on a tiny slice (first-call costs of autograd and the kernels), then measure.
    tiny = [u[:1, :4, :8], delta[:1, :4, :8], A[:4], B[:1, :, :8], C[:1, :, :8], D[:4]]
    tiny = [t.detach().requires_grad_() for t in (*tiny, z[:1, :4, :8], delta_bias[:4])]
    warm = run(tiny)
    warm.backward(torch.ones_like(warm))  # (the first backward with a gradient imports a lot)

    rss0 = _rss_mib()
    t0 = time.perf_counter()
    out = run(inputs)
    t1 = time.perf_counter()
    out.backward(grad_out)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    norms = [float(out.detach().norm())] + [float(t.grad.norm()) for t in inputs]
    return {
        "impl": impl,
        "forward_s": t1 - t0,
        "backward_s": t2 - t1,
        "total_s": t2 - t0,
        "peak_mib": peak,
        "scan_mib": peak - rss0,
        "norms": norms,
    }


def run_worker(impl: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        *("--batch", str(args.batch), "--dim", str(args.dim)),
        *("--length", str(args.length), "--state", str(args.state)),
        *("--threads", str(args.threads)),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_scan: worker {impl} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="quick dry run (2 x 64 x 256 x 16)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (default 1: on a shared, oversubscribed machine "
        "OpenMP's spinning makes multi-threaded timings meaningless)",
    )
    parser.add_argument("--worker", choices=["loop", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="do not write results/scan.md")
    args = parser.parse_args(argv)
    if args.small:
        args.batch, args.dim, args.length, args.state = 2, 64, 256, 16
    if args.worker:
        res = worker(args.worker, args.batch, args.dim, args.length, args.state, args.threads)
        print(json.dumps(res))
        return 0

    shape = f"batch {args.batch}, D {args.dim}, L {args.length}, N {args.state}"
    print(f"selective scan, float32, CPU, {args.threads} thread(s): {shape}")
    runs: dict[str, list[dict]] = {"loop": [], "chunked": []}
    lines = []
    load = os.getloadavg()[0]
    for rep in range(args.reps):
        for impl in ("loop", "chunked"):
            res = run_worker(impl, args)
            runs[impl].append(res)
            lines.append(
                f"rep {rep + 1} {impl:8s} fwd {res['forward_s']:7.3f} s  "
                f"bwd {res['backward_s']:7.3f} s  scan memory {res['scan_mib']:8.1f} MiB"
            )
            print("  " + lines[-1])
    # Both implementations compute the same thing: compare output and gradient norms.
    a, b = runs["loop"][0]["norms"], runs["chunked"][0]["norms"]
    worst = max(abs(x - y) / max(abs(x), 1e-30) for x, y in zip(a, b))
    if worst > 1e-4:
        raise SystemExit(f"bench_scan: loop and chunked disagree (norm rel diff {worst:.1e})")

    med = {
        impl: {
            key: statistics.median(r[key] for r in rs)
            for key in ("forward_s", "backward_s", "total_s", "scan_mib", "peak_mib")
        }
        for impl, rs in runs.items()
    }
    speedup = med["loop"]["total_s"] / med["chunked"]["total_s"]
    mem_ratio = med["chunked"]["scan_mib"] / med["loop"]["scan_mib"]
    rows = [
        "| implementation | forward (s) | backward (s) | fwd+bwd (s) | scan memory (MiB) "
        "| process peak (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for impl, label in (("loop", "sequential loop (unbind)"), ("chunked", "chunked scan")):
        m = med[impl]
        rows.append(
            f"| {label} | {m['forward_s']:.3f} | {m['backward_s']:.3f} | {m['total_s']:.3f} "
            f"| {m['scan_mib']:.0f} | {m['peak_mib']:.0f} |"
        )
    summary = (
        f"fwd+bwd speed-up {speedup:.2f}x; scan memory chunked/loop {mem_ratio:.2f}; "
        f"output/gradient norms agree to {worst:.1e}"
    )
    table = "\n".join(rows)
    print()
    print(table)
    print(summary)

    if not args.no_write:
        from entitwist.utils import atomic_path

        command = "python benchmarks/bench_scan.py" + (" --small" if args.small else "")
        text = (
            "# Selective scan benchmark\n\n"
            f"Command: `{command}` (medians of {args.reps} interleaved runs, each in a fresh "
            "subprocess).\n\n"
            f"Shape: {shape}, float32, forward + backward with variable B/C, D, z, "
            f"delta_bias and softplus; torch {_torch_version()}, {args.threads} thread(s), "
            f"{platform.processor() or platform.machine()}, shared machine (absolute times "
            "are noisy; the ratio is measured interleaved).\n\n"
            "Scan memory = peak RSS of the worker minus its RSS just before the scan "
            f"(inputs excluded). Load average at the start: {load:.1f} on "
            f"{os.cpu_count()} cores.\n\n"
            f"{table}\n\n**{summary}.**\n\nRuns, in order:\n\n```\n" + "\n".join(lines) + "\n```\n"
        )
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(RESULTS) as tmp:
            Path(tmp).write_text(text)
        print(f"wrote {RESULTS}")
    return 0


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    raise SystemExit(main())
