"""Task 3: the shallow ConvNet with a NetVLAD layer (Figure 11) trained from scratch, 100 epochs, batch 50.

By default the NetVLAD layer starts as the NetVLAD paper does: k-means centres on descriptors that
the freshly initialised convolutions compute from the training images, and alpha chosen so that a
descriptor's largest assignment weight is about 100x its second. --init random starts it as the
2020 report did (random centres, alpha 0.5, no input normalisation).
"""
import argparse
import math

import torch

from common.cli import UserError, run_main
from common.data import CROP
from common.distributed import is_main
from common.models import DESCRIPTOR_DIM, ShallowNetVLAD, descriptor_count, set_alpha
from common.netvlad import check_clusters, check_fits, init_like_report
from common.run_folder import add_compile_arg, add_training_args
from common.train import start_run, train_and_report

TASK = "task3_netvlad"
INIT_NAMES = {"kmeans": "k-means init", "random": "the report's random init"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(parser, TASK, epochs=100, batch_size=50)
    add_compile_arg(parser)
    parser.add_argument("--clusters", type=int, default=16, metavar="K",
                        help="NetVLAD clusters K; the classifier sees K*16 values (default: 16; the report used 4)")
    parser.add_argument("--init", choices=("kmeans", "random"), default="kmeans",
                        help="kmeans = the NetVLAD paper's initialisation; random = the report's (default: kmeans)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="initial NetVLAD assignment sharpness (default: chosen from the descriptors "
                             "for kmeans, the report's 0.5 for random)")
    args = parser.parse_args(argv)
    check_clusters(args.clusters)
    if args.alpha is not None and not (math.isfinite(args.alpha) and args.alpha > 0):
        raise UserError(f"--alpha must be a positive number, got {args.alpha}")
    check_fits(args.batch_size, args.clusters, DESCRIPTOR_DIM, descriptor_count(CROP))
    return args


def main(argv=None):
    args = parse_args(argv)
    # Measured (bench/bench_speed.py): on AMX CPUs bf16 autocast makes this model slower, not faster,
    # because its NetVLAD layer runs in fp32 anyway and the casts around it cost more than the convolutions gain.
    run = start_run(TASK, args, cpu_bf16=False)
    model = ShallowNetVLAD(len(run.data.classes), args.clusters).to(run.device)
    init = {"init": args.init, "clusters": args.clusters}
    if args.init == "kmeans":
        generator = torch.Generator().manual_seed(args.seed)
        alpha, error = model.init_kmeans(run.data.train.inputs, generator)
        init.update(chosen_alpha=alpha, kmeans_error=error)
        if is_main():  # under torchrun every rank computes the same k-means; one says so
            print(f"k-means on training descriptors: K={args.clusters}, quantisation error {error:.4f}, "
                  f"chosen alpha {alpha:.2f}")
    else:
        init_like_report(model.netvlad, torch.Generator().manual_seed(args.seed))
    if args.alpha is not None:
        set_alpha(model.netvlad, args.alpha)
    init["alpha"] = model.netvlad.alpha
    title = f"Shallow ConvNet + NetVLAD (K={args.clusters}, {INIT_NAMES[args.init]})"
    train_and_report(model, run, title, extra_config={"netvlad": init})


if __name__ == "__main__":
    run_main(main)
