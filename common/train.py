"""One training loop for every task: Adam + StepLR on logloss, top-1/top-3, checkpoints, results."""
import contextlib
import json
import math
import platform
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

from common import results
from common.cli import UserError
from common.data import SplitData, load_splits, normalize
from common.runtime import PRECISIONS, autocast, pick_device, pick_precision

REPO = Path(__file__).resolve().parent.parent
RESULT_FILES = ("metrics.json", "last.pt", "config.json")
CHECKPOINT_EVERY_S = 60


def add_training_args(parser, task, epochs, batch_size):
    """The options every task script shares, with the report's settings as defaults."""
    parser.add_argument("--data", type=Path, default=None,
                        help="split folder holding train/, validation/ and test/, each with one folder per class "
                             "(default: the demo split data/demo_split, made from demo_data/images when missing)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / task,
                        help=f"folder for tables, plots, config and checkpoints (default: results/{task})")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"batch size (default: {batch_size})")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument("--gamma", type=float, default=0.9,
                        help="StepLR factor applied to the learning rate after every epoch (default: 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, batch order and dropout (default: 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto = bf16 autocast on CPUs with AMX and bf16-capable GPUs, fp32 elsewhere; "
                             "fp32 turns mixed precision off (default: auto)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--force", action="store_true", help="replace the results of an earlier run in --out")


@dataclass
class Run:
    task: str
    args: object
    data: SplitData
    device: torch.device
    precision: str

    @property
    def out(self):
        return self.args.out


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_args(args):
    for name, ok in (("epochs", args.epochs >= 1), ("batch-size", args.batch_size >= 1),
                     ("lr", args.lr > 0), ("gamma", 0 < args.gamma <= 1)):
        if not ok:
            raise UserError(f"--{name} {getattr(args, name.replace('-', '_'))} is out of range")


def prepare_out(out, resume, force):
    """Make the run folder; refuse to overwrite an earlier run unless asked to."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to --out {out}: {e.strerror}") from None
    if resume and not (out / "last.pt").exists():
        raise UserError(f"--resume: {out} holds no checkpoint (last.pt)")
    if not resume and not force and any((out / f).exists() for f in RESULT_FILES):
        raise UserError(f"{out} already holds a run: --resume continues it, --force replaces it, --out picks another folder")


def default_data():
    """The demo split, made from the embedded demo images the first time it is needed."""
    from data_split import DEMO_IMAGES, DEMO_SPLIT, split_dataset
    if not (DEMO_SPLIT / "split.csv").exists():
        split_dataset(DEMO_IMAGES, DEMO_SPLIT)
    return DEMO_SPLIT


def start_run(task, args):
    """Everything before the model: checks, seeds, device, precision, run folder, data."""
    check_args(args)
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    if args.data is not None and not args.data.is_dir():
        raise UserError(f"--data {args.data}: no such folder")
    prepare_out(args.out, args.resume, args.force)
    data = load_splits(args.data if args.data is not None else default_data())
    seed_everything(args.seed)
    return Run(task, args, data, device, precision)


def prepare(inputs, device):
    """uint8 images are normalised here, per batch; float inputs (cached features) pass as they are.

    Images go channels-last: oneDNN's convolutions with 3 or 4 input channels run about twice
    as fast that way on CPU (see bench/bench_task2.py).
    """
    inputs = inputs.to(device, non_blocking=True)
    if inputs.dtype != torch.uint8:
        return inputs
    return normalize(inputs).contiguous(memory_format=torch.channels_last)


def topk_correct(log_probs, labels, ks):
    """Number of samples whose label is among the k highest scores, for each k (capped at #classes)."""
    maxk = min(max(ks), log_probs.shape[1])
    hits = log_probs.topk(maxk, dim=1).indices.eq(labels[:, None])
    return [int(hits[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


class Meter:
    """Running sums of logloss and top-1/top-3 hits over batches."""

    def __init__(self):
        self.loss = self.top1 = self.top3 = self.n = 0

    def add(self, log_probs, labels, loss_sum):
        top1, top3 = topk_correct(log_probs, labels, (1, 3))
        self.loss += float(loss_sum)
        self.top1 += top1
        self.top3 += top3
        self.n += len(labels)

    def result(self):
        return {"loss": self.loss / self.n, "top1": 100 * self.top1 / self.n, "top3": 100 * self.top3 / self.n}


def train_epoch(model, split, optimizer, run, generator, epoch):
    model.train()
    meter = Meter()
    batches = split.batches(run.args.batch_size, generator)
    bar = tqdm(batches, total=math.ceil(len(split) / run.args.batch_size), desc=f"epoch {epoch}",
               leave=False, disable=not sys.stderr.isatty())
    for inputs, labels in bar:
        labels = labels.to(run.device)
        with autocast(run.device, run.precision):
            log_probs = model(prepare(inputs, run.device)).float()
        loss = F.nll_loss(log_probs, labels)
        if not torch.isfinite(loss):
            raise UserError(f"training loss became {loss.item()} in epoch {epoch}: try a lower --lr or --precision fp32")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meter.add(log_probs.detach(), labels, loss.detach() * len(labels))
        bar.set_postfix(loss=f"{meter.loss / meter.n:.3f}", top1=f"{100 * meter.top1 / meter.n:.1f}")
    return meter.result()


@torch.inference_mode()
def evaluate(model, split, run):
    """Logloss, top-1 and top-3 in eval mode; also returns the predicted classes."""
    model.eval()
    meter, predictions = Meter(), []
    for inputs, labels in split.batches(run.args.batch_size):
        labels = labels.to(run.device)
        with autocast(run.device, run.precision):
            log_probs = model(prepare(inputs, run.device)).float()
        meter.add(log_probs, labels, F.nll_loss(log_probs, labels, reduction="sum"))
        predictions.append(log_probs.argmax(dim=1).cpu())
    return meter.result(), torch.cat(predictions)


def run_key(run):
    """Settings a resumed run must share with the run it continues."""
    a = run.args
    return {"task": run.task, "data": str(run.data.root), "batch_size": a.batch_size, "lr": a.lr,
            "gamma": a.gamma, "seed": a.seed, "precision": run.precision}


class StopAfterEpoch:
    """First Ctrl-C: finish the epoch, save a checkpoint, exit. Second Ctrl-C: quit at once."""

    def __enter__(self):
        self.requested = False
        self.previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this epoch to save a checkpoint (Ctrl-C again quits at once)", file=sys.stderr)

    def __exit__(self, *exc):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.previous)


def fit(model, run):
    """Train for --epochs; returns the per-epoch history.

    last.pt (everything --resume needs) and best.pt (lowest validation loss) are written at
    most every CHECKPOINT_EVERY_S seconds, at the end and on Ctrl-C: writing Figure 8's
    280 MB of weights and Adam state every 2-second epoch would cost a third of the run.
    """
    model.to(run.device, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel updates Figure 8's 23M weights in one pass instead of several.
    optimizer = torch.optim.Adam(params, lr=run.args.lr, fused=run.device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=run.args.gamma)
    generator = torch.Generator().manual_seed(run.args.seed)  # batch order, apart from dropout's RNG
    history, best, start = [], {"loss": math.inf}, 1
    if run.args.resume:
        state = torch.load(run.out / "last.pt", map_location=run.device, weights_only=False)
        if state["key"] != run_key(run):
            raise UserError(f"--resume: the checkpoint in {run.out} was made with other settings: {state['key']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        generator.set_state(state["shuffle_rng"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
        print(f"resuming {run.out} after epoch {state['epoch']}")

    def save_checkpoint(epoch):
        results.atomic_torch_save(best, run.out / "best.pt")
        results.atomic_torch_save({
            "epoch": epoch, "key": run_key(run), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(), "shuffle_rng": generator.get_state(),
            "history": history, "best": best}, run.out / "last.pt")

    saved_at = time.perf_counter()
    try:
        with StopAfterEpoch() as stop:
            for epoch in range(start, run.args.epochs + 1):
                began = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                train = train_epoch(model, run.data.train, optimizer, run, generator, epoch)
                val, _ = evaluate(model, run.data.validation, run)
                scheduler.step()
                history.append({"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train.items()},
                                **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - began})
                if val["loss"] < best["loss"]:
                    best = {"loss": val["loss"], "epoch": epoch,
                            "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                if stop.requested or epoch == run.args.epochs or time.perf_counter() - saved_at > CHECKPOINT_EVERY_S:
                    save_checkpoint(epoch)
                    saved_at = time.perf_counter()
                results.write_history(run.out, history)
                tqdm.write(f"epoch {epoch:3d}/{run.args.epochs}  lr {lr:.2e}  "
                           f"train loss {train['loss']:.4f} top1 {train['top1']:5.1f}%  "
                           f"val loss {val['loss']:.4f} top1 {val['top1']:5.1f}% top3 {val['top3']:5.1f}%  "
                           f"({history[-1]['seconds']:.1f}s)")
                if stop.requested:
                    print(f"stopped after epoch {epoch}, saved in {run.out / 'last.pt'}; continue with --resume",
                          file=sys.stderr)
                    sys.exit(130)
    except KeyboardInterrupt:
        print(f"\nquit; continue from the last checkpoint in {run.out} with --resume", file=sys.stderr)
        sys.exit(130)
    return history


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def config_of(run, model, extra):
    trainable, total = count_parameters(model)
    return {
        "task": run.task, "arguments": vars(run.args), "seed": run.args.seed,
        "device": str(run.device), "precision": run.precision,
        "parameters": {"trainable": trainable, "total": total},
        "classes": run.data.classes, "data": str(run.data.root),
        "split_sizes": {name: len(split) for name, split in run.data.splits().items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        **extra,
    }


def run_or_reuse(main, argv, out, epochs, force=False):
    """Run a task script's main(argv) for `epochs` into `out`, its printed output in out/log.txt.

    A finished run of as many epochs is reused; a shorter or interrupted one continues from its
    checkpoint; `force` starts afresh. Returns the run's metrics. reproduce.py and the NetVLAD
    study build on this, so that stopping and restarting them loses no finished work.
    """
    config = out / "config.json"
    recorded = json.loads(config.read_text())["arguments"]["epochs"] if config.exists() and not force else None
    if recorded is not None and recorded > epochs:
        raise UserError(f"{out} holds a {recorded}-epoch run, more than the {epochs} epochs asked for: "
                        "use --force or another folder")
    if recorded == epochs and (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    resume = not force and (out / "last.pt").exists()
    argv = [*argv, "--epochs", str(epochs), "--out", str(out), "--resume" if resume else "--force"]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        main(argv)
    return json.loads((out / "metrics.json").read_text())


def train_and_report(model, run, title, extra_config=None):
    """Train, evaluate every split in eval mode, and write the table, plots and config."""
    config = config_of(run, model, extra_config or {})
    trainable, total = config["parameters"].values()
    print(f"{title}: {trainable:,} trainable of {total:,} parameters; {run.device}, {run.precision}; "
          f"train/validation/test = {'/'.join(str(n) for n in config['split_sizes'].values())} images")
    results.write_config(run.out, config)
    history = fit(model, run)
    metrics, predictions = {}, None
    for name, split in run.data.splits().items():
        metrics[name], predictions = evaluate(model, split, run)  # test comes last
    results.write_metrics(run.out, metrics, title)
    results.plot_history(run.out, [history], title)
    counts = results.confusion_matrix(run.data.test.labels, predictions, len(run.data.classes))
    results.plot_confusion(run.out, counts, run.data.classes, title)
    print(f"\n{title} ({run.out})\n{results.format_table(metrics)}")
    return metrics
