"""torchrun: one process (rank) per device, as torch.distributed runs it; nothing changes without it.

Every rank draws the same shuffled global batches (same seed) and trains on its own rows of each,
rows rank, rank + world, ...; DistributedDataParallel averages the gradients, and the loss is
scaled so that the average is the gradient of the global batch's mean loss: --batch-size and --lr
mean what they mean in one process. Metrics are sums over ranks (counts and loss sums), rank 0
alone writes files and prints, and work that must happen once (decoding the images, making the
demo split) happens on rank 0 first. Backend: NCCL on CUDA, gloo on CPU.
"""
import contextlib
import datetime
import os
import warnings

import torch
import torch.distributed as dist

from common.errors import UserError


def launched():
    """True in a process that torchrun started with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device):
    """Join torchrun's process group if there is one; returns the device this rank uses (its own
    GPU, cuda:LOCAL_RANK, on CUDA)."""
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                            f"give --nproc_per_node at most that")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"--device {device.type} cannot run under torchrun; use cuda or cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
    return device


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    return rank() == 0


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block, then the others (which then find its results, e.g. the decoded-image cache)."""
    if world() > 1 and not is_main():
        dist.barrier()
    yield
    if world() > 1 and is_main():
        dist.barrier()


def shard(rows):
    """This rank's rows of a global batch."""
    return rows[rank()::world()]


def train_shard(rows):
    """This rank's rows of a training batch. A rank left without any (a last batch smaller than the
    number of ranks) gets the batch's first row as a stand-in, which the loss weighs 0: every rank
    must run backward for DDP to sum the gradients, and a compiled backward fails on an empty batch."""
    return shard(rows) if len(rows) > rank() else rows[:1]


def sum_over_ranks(*values):
    """The sums over ranks of a few numbers, exactly (float64); the numbers themselves in one process."""
    if world() == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None  # NCCL: GPU tensors
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return tuple(total.tolist())


def all_ranks(flag):
    """True when `flag` is true on every rank: a decision all ranks must take together."""
    return sum_over_ranks(float(bool(flag)))[0] == world()


def gather_rows(rows, indices, n):
    """Every rank's rows (a tensor, with their indices among n) -> the whole n x ... tensor, on every rank."""
    if world() == 1:
        return rows
    parts = [None] * world()
    dist.all_gather_object(parts, (indices, rows.cpu()))
    parts = [(part_indices, part) for part_indices, part in parts if len(part_indices)]  # a rank may hold none
    whole = torch.empty(n, *parts[0][1].shape[1:], dtype=parts[0][1].dtype)
    for part_indices, part in parts:
        whole[part_indices] = part
    return whole


def from_every_rank(value):
    """Every rank's value (any picklable object), in rank order, on every rank; [value] in one process."""
    if world() == 1:
        return [value]
    values = [None] * world()
    dist.all_gather_object(values, value)
    return values


def broadcast(value):
    """Rank 0's value (any picklable object, e.g. a checkpoint it loaded) on every rank."""
    if world() == 1:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box)
    return box[0]


def wrap(model, device):
    """The model for training: DistributedDataParallel under torchrun, else the model itself."""
    if world() == 1:
        return model
    # Channels-last 1 x 1 weights (NetVLAD's) have strides of their own for the same memory order;
    # DDP copies their tiny gradients into its buckets and says so once per rank.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def finish():
    """Leave the process group (NCCL warns at exit otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()
