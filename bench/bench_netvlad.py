"""Benchmark: NetVLAD aggregation by matrix products (ours) against the B x K x D x N broadcast form.

Each variant runs forward + backward in a fresh process, so one variant's freed memory cannot
hide the other's peak. Peak memory is the rise of the process's peak RSS (VmHWM) over its RSS
right after building the input and the layer: the high-water mark is reset there by writing 5
to /proc/self/clear_refs (ru_maxrss cannot be reset and inherits the parent's size at fork).
"""
import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
from common.cli import UserError, run_main  # noqa: E402
from common.netvlad import NetVLAD, estimate_forward_bytes, init_from_descriptors  # noqa: E402


class BroadcastNetVLAD(NetVLAD):
    """The straightforward form: weighted residuals as a B x K x D x N tensor, summed over N."""

    def aggregate(self, a, x):  # a: B x N x K, x: B x N x D
        residuals = x.transpose(1, 2).unsqueeze(1) - self.centroids.unsqueeze(-1)  # B x K x D x N
        return (residuals * a.transpose(1, 2).unsqueeze(2)).sum(-1)


def proc_kib(path, field):
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])


def initialised_layer(k, batch, dim, side):
    """The layer's parameters after k-means on the input, and a channels-last input as the task's
    convolutions hand it over. Made once, in the parent: k-means in two processes can settle on
    slightly different centres (float32 ties), which would make the outputs incomparable."""
    torch.manual_seed(0)
    layer = NetVLAD(k, dim)
    x = torch.randn(batch, dim, side, side).contiguous(memory_format=torch.channels_last)
    init_from_descriptors(layer, x[:4].flatten(2).transpose(1, 2).reshape(-1, dim))
    return layer.state_dict(), x


def measure(variant, k, dim, state, x, repeats):
    """Runs in a fresh process: seconds per forward + backward, peak bytes, output and gradients."""
    layer = {"ours": NetVLAD, "broadcast": BroadcastNetVLAD}[variant](k, dim)
    layer.load_state_dict(state)
    x.requires_grad_()
    baseline = proc_kib("/proc/self/status", "VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    times = []
    for _ in range(repeats + 1):  # the first run is a warm-up
        layer.zero_grad()
        x.grad = None
        start = time.perf_counter()
        out = layer(x)
        out.pow(3).sum().backward()  # not out.sum(): its gradient through the final L2 would be ~0
        times.append(time.perf_counter() - start)
    peak = (proc_kib("/proc/self/status", "VmHWM") - baseline) * 1024
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return statistics.median(times[1:]), peak, out.detach(), grads


def run_fresh(*args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=50,
                        help="feature maps per batch (default 50, the task's batch size)")
    parser.add_argument("--clusters", type=int, nargs="+", default=[4, 16, 64],
                        help="values of K to compare (default 4 16 64)")
    parser.add_argument("--dim", type=int, default=16, help="descriptor dimension D (default 16, the task's)")
    parser.add_argument("--side", type=int, default=109,
                        help="feature map height = width (default 109: 11,881 descriptors, the task's)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed forward + backward runs per variant after one warm-up; "
                             "the table shows their median (default 2)")
    args = parser.parse_args()
    if min(args.batch, args.dim, args.side, args.repeats, *args.clusters) < 1:
        raise UserError("--batch, --clusters, --dim, --side and --repeats must be positive")

    n = args.side ** 2
    # about 3 B x K x D x N float32 tensors are live at the broadcast form's peak (measured); say 4
    broadcast_bytes = 4 * 4 * args.batch * max(args.clusters) * args.dim * n
    available = proc_kib("/proc/meminfo", "MemAvailable") * 1024
    if broadcast_bytes > available:
        raise UserError(f"the broadcast form at K={max(args.clusters)} needs about {broadcast_bytes / 2**30:.1f} GiB, "
                        f"more than the {available / 2**30:.1f} GiB available now; lower --batch")
    print(f"batch {args.batch}, D {args.dim}, N {n}, {torch.get_num_threads()} threads, float32, forward + backward")
    print(f"{'K':>4} {'ours s':>8} {'bcast s':>8} {'speed x':>8} {'ours MiB':>9} {'bcast MiB':>10} {'mem x':>7} "
          f"{'estimate MiB':>13} {'max |diff|':>10}")
    for k in args.clusters:
        state, x = initialised_layer(k, args.batch, args.dim, args.side)
        t_ours, m_ours, out_ours, g_ours = run_fresh("ours", k, args.dim, state, x, args.repeats)
        t_bc, m_bc, out_bc, g_bc = run_fresh("broadcast", k, args.dim, state, x, args.repeats)
        same = torch.allclose(out_ours, out_bc, atol=1e-5) and all(
            torch.allclose(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item()) for a, b in zip(g_ours, g_bc))
        diff = (out_ours - out_bc).abs().max().item()
        estimate = estimate_forward_bytes(args.batch, k, args.dim, n)
        print(f"{k:>4} {t_ours:>8.3f} {t_bc:>8.3f} {t_bc / t_ours:>8.1f} {m_ours / 2**20:>9.0f} {m_bc / 2**20:>10.0f} "
              f"{m_bc / m_ours:>7.1f} {estimate / 2**20:>13.0f} {diff:>10.1e}")
        if not same:
            raise SystemExit(f"outputs or gradients differ between the two forms at K={k}")
    print("outputs and gradients (input, centres, conv weight and bias) agree between the two forms")


if __name__ == "__main__":
    run_main(main)
