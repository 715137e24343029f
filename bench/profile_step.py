"""Where one training step of task 2 or 3 spends its time: forward, backward and Adam (median of
--steps steps after warm-up), then torch.profiler's operators by self time. The demo split's
training images a batch of 50 at a time, task 3's NetVLAD layer initialised by k-means on them,
channels-last, fused Adam and the scripts' process settings, as the training loop runs them
(random images and a random NetVLAD init would time denormal floats, not the real work).

    python bench/profile_step.py task2_shallow --precision fp32
    python bench/profile_step.py task3_netvlad --precision bf16 --compile off
    python bench/profile_step.py task2_shallow --against-plain   # what the space-to-depth convolution buys
    python bench/profile_step.py task2_shallow --device cuda --precision bf16 --against-plain
    python bench/profile_step.py task2_shallow --gemm   # its largest layer's products against this CPU's best
"""
import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
import tasks  # noqa: E402
from common.models import with_plain_layers  # noqa: E402
from common.data import load_splits  # noqa: E402
from common.runtime import autocast, cpu_flags, flush_denormals, keep_freed_memory  # noqa: E402
from common.task import Prepared  # noqa: E402
from common.train import Run  # noqa: E402
from common.demo import default_data  # noqa: E402

TASKS = ("task2_shallow", "task3_netvlad")


def build(name, data):
    """The task's model as its script builds it with reproduce.py's options, seed 0 (task 3: K = 16,
    k-means init on the training images)."""
    task = tasks.load(name)
    config = task.config(**task.reproduce_with)
    torch.manual_seed(0)
    run = Run(config, data, torch.device("cpu"), "fp32")
    return (task.prepare(run) if task.prepare else Prepared(task.build_model(config, len(data.classes)), run)).model


def stepper(model, args, batches):
    """A function running one training step of `model`; returns its forward, backward and Adam seconds."""
    device = torch.device(args.device)
    # CUDA runs asynchronously: wait for the GPU at each clock reading, or the times are launch times
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    forward = torch.compile(model) if args.compile == "on" else model

    def step():
        images, labels = (tensor.to(device) for tensor in next(batches))
        synchronize()
        began = time.perf_counter()
        with autocast(device, args.precision):
            loss = F.nll_loss(forward(images).float(), labels)
        synchronize()
        forwarded = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        synchronize()
        backwarded = time.perf_counter()
        optimizer.step()
        synchronize()
        return forwarded - began, backwarded - forwarded, time.perf_counter() - backwarded

    for _ in range(3):  # compilation and first-touch allocations
        step()
    return step


def machine(device):
    return torch.cuda.get_device_name() if device == "cuda" else \
        f"{torch.get_num_threads()} threads, CPU flags: {cpu_flags()}"


def gemm_rates(args, repeats=10):
    """GFLOP/s of the three matrix products of Figure 8's 46,656 x 500 layer (batch 50) next to a
    square 2048 product of the same dtype: how close task 2's largest items run to what this
    machine's matrix library reaches at all."""
    device = torch.device(args.device)
    dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    batch, inputs, outputs = 50, 46656, 500
    x, weight, grad, square = (torch.randn(*shape, device=device).to(dtype) for shape in
                               ((batch, inputs), (outputs, inputs), (batch, outputs), (2048, 2048)))
    layer_flops = 2 * batch * inputs * outputs
    products = {"square 2048 x 2048": (lambda: square @ square, 2 * 2048 ** 3),
                "forward, x W^T (50 x 500 out)": (lambda: x @ weight.t(), layer_flops),
                "input gradient, g W (50 x 46,656 out)": (lambda: grad @ weight, layer_flops),
                "weight gradient, g^T x (500 x 46,656 out)": (lambda: grad.t() @ x, layer_flops)}
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for name, (product, flops) in products.items():
        seconds = []
        for _ in range(repeats + 2):  # the first two allocate and warm up
            synchronize()
            began = time.perf_counter()
            product()
            synchronize()
            seconds.append(time.perf_counter() - began)
        median = statistics.median(seconds[2:])
        print(f"{name}: {1000 * median:.1f} ms, {flops / median / 1e9:.0f} GFLOP/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compile", choices=("on", "off"), default="on")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the step runs (default: cpu; the training images are read on the CPU either way)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (default: 8)")
    parser.add_argument("--rows", type=int, default=12, help="profiler rows (default: 12)")
    parser.add_argument("--against-plain", action="store_true",
                        help="also time the same model with its convolutions run as plain layers (the code before "
                             "the space-to-depth convolution), alternating with it, and print the ratio")
    parser.add_argument("--gemm", action="store_true",
                        help="instead of a step, time task 2's three 46,656 x 500 matrix products (random values) "
                             "next to a square 2048 product, in GFLOP/s")
    args = parser.parse_args()
    if args.gemm and args.task != "task2_shallow":
        parser.error("--gemm times task 2's linear layer: give task2_shallow")
    keep_freed_memory()
    flush_denormals()
    if args.gemm:
        print(f"matrix products, {args.precision}, {machine(args.device)}")
        return gemm_rates(args)
    data = load_splits(default_data())
    train = data.train
    batches = itertools.cycle([batch for batch in train.batches(50) if len(batch[1]) == 50])  # uint8, as in training
    variants = {"space-to-depth": build(args.task, data)}
    if args.against_plain:
        variants["plain layers"] = with_plain_layers(build(args.task, data))  # the same weights
    steps = {name: stepper(model.to(args.device, memory_format=torch.channels_last), args, batches)
             for name, model in variants.items()}
    times = {name: [] for name in steps}
    for _ in range(4):  # in turns, so that both see the same machine
        for name, step in steps.items():
            times[name] += [step() for _ in range(-(-args.steps // 4))]
    print(f"{args.task}, {args.precision}, compile {args.compile}, {machine(args.device)}")
    for name, measured in times.items():
        fwd, bwd, adam = (1000 * statistics.median(t[i] for t in measured) for i in range(3))
        print(f"{name}: per step forward {fwd:.0f} ms, backward {bwd:.0f} ms, Adam {adam:.0f} ms, "
              f"total {fwd + bwd + adam:.0f} ms")
    if args.against_plain:
        total = {name: statistics.median(sum(t) for t in measured) for name, measured in times.items()}
        print(f"plain layers / space-to-depth: {total['plain layers'] / total['space-to-depth']:.2f}x per step")
    on_gpu = args.device == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * on_gpu) as prof:
        for _ in range(3):
            steps["space-to-depth"]()
    sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=args.rows))


if __name__ == "__main__":
    main()
