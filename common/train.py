"""One training loop for every task: Adam + StepLR on logloss, top-1/top-3, checkpoints, results."""
import contextlib
import math
import platform
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

from common import distributed, results
from common.augment import augment_batch, train_augmentation
from common.cli import UserError
from common.data import CROP, Split, SplitData, load_splits
from common.run_folder import (check_args, check_out, check_resumable, check_schedule, clear_previous,
                               load_checkpoint, open_run_folder, optimizer_settings, run_key)
from common.runtime import CompiledOrEager, autocast, pick_compile, pick_device, pick_precision
from common.split import DEMO_IMAGES, default_data

CHECKPOINT_EVERY_S = 60
EPOCH_LISTENERS = []  # f(history_row, epochs) after every epoch: reproduce.py shows progress inside a run


@dataclass
class Run:
    task: str
    args: object
    data: SplitData
    device: torch.device
    precision: str
    compiled: bool = False  # forward passes through torch.compile
    identity: dict = field(default_factory=dict)  # settings known only after loading, e.g. a weights fingerprint
    train_source: Split = None  # training batches come from here instead of data.train (task 1's augmented views)

    @property
    def out(self):
        return self.args.out

    @property
    def train_split(self):
        return self.data.train if self.train_source is None else self.train_source


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # and every GPU's
    torch.backends.cudnn.deterministic = True  # else cuDNN may pick convolution algorithms that add in any order


def start_run(task, args, cpu_bf16=True):
    """Everything before the model: checks, seeds, device, precision, data. --out is created only
    when training starts (train_and_report), so a refused run leaves nothing behind.
    cpu_bf16=False: --precision auto stays fp32 on CPUs (see pick_precision)."""
    check_args(args)
    device = distributed.setup(pick_device(args.device))
    precision = pick_precision(args.precision, device, cpu_bf16)
    compiled = pick_compile(getattr(args, "compile", "off"), device)  # only tasks 2 and 3 offer --compile
    if args.data is not None and not args.data.is_dir():
        raise UserError(f"--data {args.data}: no such folder")
    with distributed.main_first():  # under torchrun, rank 0 makes the demo split and decodes; the others read
        root = args.data if args.data is not None else default_data()
        if distributed.is_main():  # the others would find rank 0's run folder, made meanwhile
            check_out(args, root, *([] if args.data is not None else [DEMO_IMAGES]))
        data = load_splits(root)
    seed_everything(args.seed)
    return Run(task, args, data, device, precision, compiled)


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
        """The metrics over every rank's batches: sums first, then one division (exact under torchrun)."""
        loss, top1, top3, n = distributed.sum_over_ranks(self.loss, self.top1, self.top3, self.n)
        return {"loss": loss / n, "top1": 100 * top1 / n, "top3": 100 * top3 / n}


def diverged(loss_name, value, epoch, first_step=False):
    """The error for a non-finite loss. Only a loss that was finite before can have been driven away
    by the learning rate; one that is not finite at the very first step comes from the model's settings."""
    if first_step:
        return UserError(f"{loss_name} loss is {value} at the first step, before any update (so not because of "
                         "--lr): the model's settings give non-finite outputs (check the task's options), "
                         "or try --precision fp32")
    return UserError(f"{loss_name} loss became {value} in epoch {epoch}: try a lower --lr or --precision fp32")


def train_epoch(model, forward, split, optimizer, run, generator, epoch):
    """One pass over the shuffled split; `forward` is the model or its compiled form. With --augment,
    image batches (not task 1's cached features, augmented when computed) are cropped and flipped."""
    model.train()
    meter = Meter()
    batch_size = run.args.batch_size
    batches = split.batches(batch_size, generator, distributed.train_shard)
    augmentation = train_augmentation(CROP) if run.args.augment else None
    bar = tqdm(batches, total=math.ceil(len(split) / batch_size), desc=f"epoch {epoch}",
               leave=False, disable=not sys.stderr.isatty() or not distributed.is_main())
    for step, (inputs, labels) in enumerate(bar):
        labels = labels.to(run.device)
        if augmentation is not None and inputs.dtype == torch.uint8:
            inputs = augment_batch(inputs, augmentation)
        with autocast(run.device, run.precision):
            log_probs = forward(inputs.to(run.device, non_blocking=True)).float()
        # The global batch's mean loss: this rank's sum over the whole batch's size, times the number of
        # ranks, because DistributedDataParallel averages the ranks' gradients (1 in one process).
        global_size = min(batch_size, len(split) - step * batch_size)
        stand_in = global_size <= distributed.rank()  # see distributed.train_shard
        loss_sum = F.nll_loss(log_probs, labels, reduction="sum") * (0 if stand_in else 1)
        loss = loss_sum / (global_size / distributed.world())  # in one process exactly F.nll_loss's mean
        if not torch.isfinite(loss):
            raise diverged("training", loss.item(), epoch, first_step=epoch == 1 and step == 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not stand_in:
            meter.add(log_probs.detach(), labels, loss_sum.detach())
        if meter.n:  # a rank may have had only stand-in rows so far
            bar.set_postfix(loss=f"{meter.loss / meter.n:.3f}", top1=f"{100 * meter.top1 / meter.n:.1f}")
    return meter.result()


@torch.inference_mode()
def evaluate(model, split, run, forward=None):
    """Logloss, top-1 and top-3 in eval mode; also returns the N x C log-probabilities (on the CPU).
    Under torchrun each rank evaluates its rows of every batch; sums and rows are gathered."""
    model.eval()
    forward = model if forward is None else forward
    meter, outputs = Meter(), []
    for inputs, labels in split.batches(run.args.batch_size, shard=distributed.shard):
        if not len(labels):
            continue  # a last batch smaller than the number of ranks
        labels = labels.to(run.device)
        with autocast(run.device, run.precision):
            log_probs = forward(inputs.to(run.device, non_blocking=True)).float()
        meter.add(log_probs, labels, F.nll_loss(log_probs, labels, reduction="sum"))
        outputs.append(log_probs.cpu())
    rows = torch.cat([distributed.shard(batch) for batch in torch.arange(len(split)).split(run.args.batch_size)])
    log_probs = torch.cat(outputs) if outputs else torch.empty(0)  # a rank with no rows at all
    return meter.result(), distributed.gather_rows(log_probs, rows, len(split))


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
STOPPED_EXIT_CODES = tuple(128 + signum for signum in STOP_SIGNALS)  # 130, 143, 129: the shell's codes


class StopAfterEpoch:
    """First Ctrl-C, SIGTERM (Slurm's time limit, `kill`) or SIGHUP (a closed terminal): finish the
    epoch, save a checkpoint, exit 128 + the signal's number. A second signal quits at once."""

    def __enter__(self):
        self.signum = None
        self.previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self.handle)
        return self

    def handle(self, signum, frame):
        if self.signum is not None:
            self.signum = signum
            raise KeyboardInterrupt
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this epoch to save a checkpoint ({name} again quits at once)",
              file=sys.stderr)

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_code(self):
        return 128 + (self.signum or signal.SIGINT)

    def __exit__(self, *exc):
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)


def fit(model, forward, run, resumed=None):
    """Train for --epochs, continuing from the checkpoint `resumed` if given; returns the per-epoch history.

    `forward` is the model, or its torch.compile form (which shares its parameters).

    last.pt (everything --resume needs) and best.pt (lowest validation loss) are written at
    most every CHECKPOINT_EVERY_S seconds, at the end and on Ctrl-C: writing Figure 8's
    280 MB of weights and Adam state every 2-second epoch would cost a third of the run.
    """
    # A model may give its own parameter groups (a fine-tuned backbone learns at a lower rate than its head).
    groups = model.param_groups(run.args.lr) if hasattr(model, "param_groups") else \
        [{"params": [p for p in model.parameters() if p.requires_grad], "lr": run.args.lr}]
    # The fused kernel updates Figure 8's 23M weights in one pass instead of several.
    optimizer = torch.optim.Adam(groups, lr=run.args.lr, fused=run.device.type in ("cpu", "cuda"))
    initial_lrs, settings = [g["lr"] for g in optimizer.param_groups], optimizer_settings(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=run.args.gamma)
    generator = torch.Generator().manual_seed(run.args.seed)  # batch order, apart from dropout's RNG
    history, best, start = [], {"loss": math.inf}, 1
    if resumed is not None:
        try:  # the key matched, yet a checkpoint from elsewhere may still not fit
            model.load_state_dict(resumed["model"])
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
            torch.set_rng_state(resumed["rng"])
            if "cuda_rng" in resumed and run.device.type == "cuda":  # dropout on a GPU draws from the GPU's RNG
                torch.cuda.set_rng_state(resumed["cuda_rng"], run.device)
            generator.set_state(resumed["shuffle_rng"])
            best_weights = resumed["best"].get("model", {})
            shapes = {k: v.shape for k, v in model.state_dict().items()}
            if best_weights and {k: getattr(v, "shape", None) for k, v in best_weights.items()} != shapes:
                raise ValueError("its best weights have other tensors than the model")
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"--resume: {run.out / 'last.pt'} does not fit this model "
                            f"({str(e).splitlines()[0][:200]}); start over with --force") from None
        check_schedule(optimizer, scheduler, resumed["epoch"], initial_lrs, settings, run.args,
                       run.out / "last.pt")
        history, best, start = resumed["history"], resumed["best"], resumed["epoch"] + 1
        if distributed.is_main():
            print(f"resuming {run.out} after epoch {resumed['epoch']}")
    key = run_key(run)

    def save_checkpoint(epoch):
        if not distributed.is_main():
            return
        results.atomic_torch_save(best, run.out / "best.pt")
        results.atomic_torch_save({
            "epoch": epoch, "key": key, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(), "shuffle_rng": generator.get_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(run.device)} if run.device.type == "cuda" else {}),
            "history": history, "best": best}, run.out / "last.pt")

    saved_at = time.perf_counter()
    stop = StopAfterEpoch()
    try:
        with stop:
            for epoch in range(start, run.args.epochs + 1):
                began = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                train = train_epoch(model, forward, run.train_split, optimizer, run, generator, epoch)
                val, _ = evaluate(model, run.data.validation, run, forward)
                if not math.isfinite(val["loss"]):  # the epoch's last step may have made the weights NaN
                    raise diverged("validation", val["loss"], epoch)
                scheduler.step()
                history.append({"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train.items()},
                                **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - began})
                if val["loss"] < best["loss"]:
                    best = {"loss": val["loss"], "epoch": epoch,
                            "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                stopping = not distributed.all_ranks(not stop.requested)  # every rank stops after the same epoch
                if stopping or epoch == run.args.epochs or time.perf_counter() - saved_at > CHECKPOINT_EVERY_S:
                    save_checkpoint(epoch)
                    saved_at = time.perf_counter()
                if distributed.is_main():
                    results.write_history(run.out, history)
                    for listener in EPOCH_LISTENERS:
                        listener(history[-1], run.args.epochs)
                    tqdm.write(f"epoch {epoch:3d}/{run.args.epochs}  lr {lr:.2e}  "
                               f"train loss {train['loss']:.4f} top1 {train['top1']:5.1f}%  "
                               f"val loss {val['loss']:.4f} top1 {val['top1']:5.1f}% top3 {val['top3']:5.1f}%  "
                               f"({history[-1]['seconds']:.1f}s)")
                if stopping:
                    if distributed.is_main():
                        print(f"stopped after epoch {epoch}, saved in {run.out / 'last.pt'}; continue with --resume",
                              file=sys.stderr)
                    sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        if (run.out / "last.pt").exists():
            print(f"\nquit; continue from the last checkpoint in {run.out} with --resume", file=sys.stderr)
        else:
            print(f"\nquit before the first checkpoint; start {run.out} again with --force", file=sys.stderr)
        sys.exit(stop.exit_code)
    return history


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def config_of(run, model, extra):
    """What config.json records; a collective under torchrun (every rank's device), so every rank calls it."""
    trainable, total = count_parameters(model)
    rank_devices = distributed.from_every_rank(str(run.device))
    return {
        "task": run.task, "arguments": vars(run.args), "seed": run.args.seed,
        "device": str(run.device), "precision": run.precision, "compiled": run.compiled,
        "threads": torch.get_num_threads(),  # sums split over threads: another count changes the rounding
        "processes": distributed.world(),  # torchrun's ranks draw other dropout masks than one process
        **({"rank_devices": rank_devices} if len(set(rank_devices)) > 1 else {}),
        "parameters": {"trainable": trainable, "total": total},
        "classes": run.data.classes, "data": str(run.data.root),
        "split_sizes": {name: len(split) for name, split in run.data.splits().items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        **extra,
    }


def record_eager(run, config, error):
    """torch.compile failed and the run went on in eager mode: config.json says so, and why."""
    run.compiled = False
    config.update(compiled=False, compile_error=error)
    if distributed.is_main():
        results.write_config(run.out, config)


def train_and_report(model, run, title, extra_config=None):
    """Train, evaluate every split in eval mode, and write the table, plots and config."""
    config = config_of(run, model, extra_config or {})
    trainable, total = config["parameters"].values()
    main = distributed.is_main()  # under torchrun, rank 0 alone prints and writes
    if main:
        print(f"{title}: {trainable:,} trainable of {total:,} parameters; {run.device}, {run.precision}; "
              f"{results.trained_by(config)}; "
              f"train/validation/test = {'/'.join(str(n) for n in config['split_sizes'].values())} images")
    with open_run_folder(run.out, run.args.resume, run.args.force) if main else contextlib.nullcontext():
        resumed = None
        if run.args.resume and main:  # checked before config.json is rewritten with this run's settings
            resumed = load_checkpoint(run.out / "last.pt")
            check_resumable(resumed, run)
        if main:
            clear_previous(run.out, run.args.force)
            results.write_config(run.out, config)
        resumed = distributed.broadcast(resumed)
        model.to(run.device, memory_format=torch.channels_last)
        forward = distributed.wrap(model, run.device)
        if run.compiled:  # compiles at its first call
            forward = CompiledOrEager(forward, run.args.compile, lambda error: record_eager(run, config, error))
        history = fit(model, forward, run, resumed)
        metrics, log_probs = {}, None
        for name, split in run.data.splits().items():
            metrics[name], log_probs = evaluate(model, split, run, forward)  # test comes last
        if main:
            results.write_metrics(run.out, metrics, title, results.trained_by(config))
            results.plot_history(run.out, [history], title)
            counts = results.confusion_matrix(run.data.test.labels, log_probs.argmax(dim=1), len(run.data.classes))
            results.write_confusion_csv(run.out / "confusion.csv", counts, run.data.classes)
            results.plot_confusion(run.out / "confusion.png", counts, run.data.classes, f"{title}: test confusion matrix",
                                   whole_matrix=run.out / "confusion.csv")
    if main:
        print(f"\n{title} ({run.out}; {results.trained_by(config)})\n{results.format_table(metrics)}")
    distributed.finish()  # under torchrun: the last collective was the test split's
    return metrics
