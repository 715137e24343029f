"""One training loop for every task: Adam + StepLR on logloss, top-1/top-3, stopping cleanly on a
signal. It reads no command line and writes no files: common.run saves what it hands over."""
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import distributed
from common.augment import augment_batch, train_augmentation
from common.errors import UserError
from common.config import RunConfig, is_number
from common.data import CROP, Split, SplitData
from common.runtime import autocast

CHECKPOINT_EVERY_S = 60


@dataclass
class Run:
    """What a run trains on, and where and how it computes."""
    config: RunConfig
    data: SplitData
    device: torch.device
    precision: str
    compiled: bool = False  # forward passes through torch.compile
    train_source: Split = None  # training batches come from here instead of data.train (task 1's augmented views)

    @property
    def out(self):
        return self.config.out

    @property
    def train_split(self):
        return self.data.train if self.train_source is None else self.train_source


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # and every GPU's
    torch.backends.cudnn.deterministic = True  # else cuDNN may pick convolution algorithms that add in any order


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
    batch_size = run.config.batch_size
    batches = split.batches(batch_size, generator, distributed.train_shard)
    augmentation = train_augmentation(CROP) if run.config.augment else None
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
    for inputs, labels in split.batches(run.config.batch_size, shard=distributed.shard):
        if not len(labels):
            continue  # a last batch smaller than the number of ranks
        labels = labels.to(run.device)
        with autocast(run.device, run.precision):
            log_probs = forward(inputs.to(run.device, non_blocking=True)).float()
        meter.add(log_probs, labels, F.nll_loss(log_probs, labels, reduction="sum"))
        outputs.append(log_probs.cpu())
    rows = torch.cat([distributed.shard(batch) for batch in torch.arange(len(split)).split(run.config.batch_size)])
    log_probs = torch.cat(outputs) if outputs else torch.empty(0)  # a rank with no rows at all
    return meter.result(), distributed.gather_rows(log_probs, rows, len(split))


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
STOPPED_EXIT_CODES = tuple(128 + signum for signum in STOP_SIGNALS)  # 130, 143, 129: the shell's codes


class StopAfterEpoch:
    """First Ctrl-C, SIGTERM (Slurm's time limit, `kill`) or SIGHUP (a closed terminal): finish the
    epoch, save a checkpoint, exit 128 + the signal's number. A second Ctrl-C quits at once; a second
    SIGTERM or SIGHUP is the same request again (reproduce.py forwards the one Slurm also sends). A signal
    ignored when the process started stays ignored: nohup's SIGHUP, a background job's SIGINT."""

    def __enter__(self):
        self.signum = None
        self.previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self.previous.items():
                if handler != signal.SIG_IGN:
                    signal.signal(signum, self.handle)
        return self

    def handle(self, signum, frame):
        if self.signum is not None:
            if signum != signal.SIGINT:  # Slurm signals the job and each of its processes: the same request twice
                return
            self.signum = signum
            raise KeyboardInterrupt
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this epoch to save a checkpoint (Ctrl-C again quits at once)",
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


def optimizer_settings(optimizer):
    """Each parameter group's settings but its parameters and learning rate (betas, eps, ...)."""
    return [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")} for g in optimizer.param_groups]


def check_schedule(optimizer, scheduler, epochs_done, initial_lrs, settings, config, path):
    """After loading: each parameter group's learning rate and the schedule must be what --lr (and
    a fine-tuned backbone's factor, in initial_lrs) and --gamma give after that many epochs, and its
    other settings those the optimizer was built with (`settings`, taken before loading), so a
    doctored optimizer or scheduler state is refused, not trained on."""
    groups = optimizer.param_groups
    fits = (scheduler.last_epoch == epochs_done and scheduler.gamma == config.gamma and scheduler.step_size == 1
            and len(groups) == len(initial_lrs)
            and all(is_number(g.get("lr")) and math.isclose(g["lr"], lr * config.gamma ** epochs_done, rel_tol=1e-6)
                    for g, lr in zip(groups, initial_lrs))
            # repr: a doctored value may be a tensor or a tuple of anything, which == would not settle
            and all(repr(g.get(k, v)) == repr(v) for g, group in zip(groups, settings) for k, v in group.items()))
    if not fits:
        raise UserError(f"--resume: the optimizer or schedule in {path} does not match --lr {config.lr} and --gamma "
                        f"{config.gamma} after {epochs_done} epochs; start over with --force")


def make_optimizer(model, config, device):
    """Adam over the trainable parameters, StepLR after every epoch. A model may give its own parameter
    groups (a fine-tuned backbone learns at a lower rate than its head)."""
    groups = model.param_groups(config.lr) if hasattr(model, "param_groups") else \
        [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr}]
    # The fused kernel updates Figure 8's 23M weights in one pass instead of several.
    optimizer = torch.optim.Adam(groups, lr=config.lr, fused=device.type in ("cpu", "cuda"))
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.gamma)


@dataclass
class Training:
    """What training carries from epoch to epoch: what last.pt saves, but for the run's key."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator  # batch order, apart from dropout's RNG
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"loss": math.inf})

    def state(self, device):
        return {"epoch": len(self.history), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state(), "shuffle_rng": self.generator.get_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                "history": self.history, "best": self.best}


def restore(training, resumed, run):
    """Continue from the checkpoint `resumed` (its key already matched): every state loaded and checked."""
    optimizer, scheduler = training.optimizer, training.scheduler
    initial_lrs, settings = [g["lr"] for g in optimizer.param_groups], optimizer_settings(optimizer)
    try:  # the key matched, yet a checkpoint from elsewhere may still not fit
        training.model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        torch.set_rng_state(resumed["rng"])
        if "cuda_rng" in resumed and run.device.type == "cuda":  # dropout on a GPU draws from the GPU's RNG
            torch.cuda.set_rng_state(resumed["cuda_rng"], run.device)
        training.generator.set_state(resumed["shuffle_rng"])
        best_weights = resumed["best"].get("model", {})
        shapes = {k: v.shape for k, v in training.model.state_dict().items()}
        if best_weights and {k: getattr(v, "shape", None) for k, v in best_weights.items()} != shapes:
            raise ValueError("its best weights have other tensors than the model")
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"--resume: {run.out / 'last.pt'} does not fit this model "
                        f"({str(e).splitlines()[0][:200]}); start over with --force") from None
    check_schedule(optimizer, scheduler, resumed["epoch"], initial_lrs, settings, run.config, run.out / "last.pt")
    training.history, training.best = resumed["history"], resumed["best"]
    if distributed.is_main():
        print(f"resuming {run.out} after epoch {resumed['epoch']}")


def train_and_validate(training, forward, run, epoch):
    """One epoch: train, validate, step the schedule; its row is added to the history."""
    began = time.perf_counter()
    lr = training.optimizer.param_groups[0]["lr"]
    train = train_epoch(training.model, forward, run.train_split, training.optimizer, run, training.generator, epoch)
    val, _ = evaluate(training.model, run.data.validation, run, forward)
    if not math.isfinite(val["loss"]):  # the epoch's last step may have made the weights NaN
        raise diverged("validation", val["loss"], epoch)
    training.scheduler.step()
    training.history.append({"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train.items()},
                             **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - began})
    if val["loss"] < training.best["loss"]:
        training.best = {"loss": val["loss"], "epoch": epoch,
                         "model": {k: v.detach().clone() for k, v in training.model.state_dict().items()}}


def print_epoch(row, epochs):
    tqdm.write(f"epoch {row['epoch']:3d}/{epochs}  lr {row['lr']:.2e}  "
               f"train loss {row['train_loss']:.4f} top1 {row['train_top1']:5.1f}%  "
               f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:5.1f}% top3 {row['val_top3']:5.1f}%  "
               f"({row['seconds']:.1f}s)")


def fit(model, forward, run, save, epoch_done, resumed=None):
    """Train for the run's epochs, continuing from the checkpoint `resumed` if given; returns the history.

    `forward` is the model, or its torch.compile form (which shares its parameters). Every rank calls
    `save(state, best)` with last.pt's and best.pt's contents at most every CHECKPOINT_EVERY_S seconds,
    at the end and on a stop signal (writing Figure 8's 280 MB of weights and Adam state every 2-second
    epoch would cost a third of the run), and `epoch_done(history)` after every epoch.
    """
    training = Training(model, *make_optimizer(model, run.config, run.device),
                        torch.Generator().manual_seed(run.config.seed))
    if resumed is not None:
        restore(training, resumed, run)
    stop = StopAfterEpoch()
    try:
        with stop:
            train_epochs(training, forward, run, stop, save, epoch_done)
    except KeyboardInterrupt:
        quit_now(run.out, stop.exit_code)
    return training.history


def train_epochs(training, forward, run, stop, save, epoch_done):
    saved_at = time.perf_counter()
    for epoch in range(len(training.history) + 1, run.config.epochs + 1):
        train_and_validate(training, forward, run, epoch)
        stopping = not distributed.all_ranks(not stop.requested)  # every rank stops after the same epoch
        if stopping or epoch == run.config.epochs or time.perf_counter() - saved_at > CHECKPOINT_EVERY_S:
            save(training.state(run.device), training.best)
            saved_at = time.perf_counter()
        epoch_done(training.history)
        if distributed.is_main():
            print_epoch(training.history[-1], run.config.epochs)
        if stopping:
            stopped(run.out, epoch, stop.exit_code)


def stopped(out, epoch, exit_code):
    if distributed.is_main():
        print(f"stopped after epoch {epoch}, saved in {out / 'last.pt'}; continue with --resume", file=sys.stderr)
    sys.exit(exit_code)


def quit_now(out, exit_code):
    """A second signal: no checkpoint now; the last one, if any, is where --resume starts."""
    if (out / "last.pt").exists():
        print(f"\nquit; continue from the last checkpoint in {out} with --resume", file=sys.stderr)
    else:
        print(f"\nquit before the first checkpoint; start {out} again with --force", file=sys.stderr)
    sys.exit(exit_code)
