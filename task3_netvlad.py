"""Task 3: the shallow ConvNet with a NetVLAD layer (Figure 11) trained from scratch, 100 epochs, batch 50.

By default the NetVLAD layer starts as the NetVLAD paper does: k-means centres on descriptors that
the freshly initialised convolutions compute from the training images, and alpha chosen so that a
descriptor's largest assignment weight is about 100x its second. --init random starts it as the
2020 report did (random centres, alpha 0.5, no input normalisation).
"""
import math
from dataclasses import dataclass

import torch

from common import cluster_maps
from common.cli import UserError, run_main
from common.config import option
from common.data import CROP
from common.distributed import is_main
from common.models import DESCRIPTOR_DIM, ShallowNetVLAD, descriptor_count, set_alpha
from common.netvlad import check_clusters, check_fits, init_like_report
from common.options import run_task
from common.task import Prepared, Task, report_table

INIT_NAMES = {"kmeans": "k-means init", "random": "the report's random init"}


@dataclass(frozen=True)
class NetVLADOptions:
    clusters: int = option(16, "NetVLAD clusters K; the classifier sees K*16 values (default: 16; the report used 4)",
                           metavar="K")
    init: str = option("kmeans", "kmeans = the NetVLAD paper's initialisation; random = the report's (default: kmeans)",
                       choices=tuple(INIT_NAMES))
    alpha: float | None = option(None, "initial NetVLAD assignment sharpness (default: chosen from the descriptors "
                                       "for kmeans, the report's 0.5 for random)")


def check_options(config):
    """K and alpha in range in NetVLAD's own words, and the layer's memory for a batch of --batch-size."""
    clusters, alpha = config.options.clusters, config.options.alpha
    check_clusters(clusters)
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise UserError(f"--alpha must be a positive number, got {alpha}")
    check_fits(config.batch_size, clusters, DESCRIPTOR_DIM, descriptor_count(CROP))


def build_model(config, num_classes):
    model = ShallowNetVLAD(num_classes, config.options.clusters)
    model.netvlad.normalize_input = config.options.init != "random"  # the report's init does not normalise
    return model


def prepare(run):
    """The NetVLAD layer's start: k-means on training descriptors, or the report's random centres."""
    options = run.config.options
    model = build_model(run.config, len(run.data.classes)).to(run.device)
    init = {"init": options.init, "clusters": options.clusters}
    generator = torch.Generator().manual_seed(run.config.seed)
    if options.init == "kmeans":
        alpha, error = model.init_kmeans(run.data.train.inputs, generator)
        init.update(chosen_alpha=alpha, kmeans_error=error)
        if is_main():  # under torchrun every rank computes the same k-means; one says so
            print(f"k-means on training descriptors: K={options.clusters}, quantisation error {error:.4f}, "
                  f"chosen alpha {alpha:.2f}")
    else:
        init_like_report(model.netvlad, generator)
    if options.alpha is not None:
        set_alpha(model.netvlad, options.alpha)
    init["alpha"] = model.netvlad.alpha
    return Prepared(model, run, {"netvlad": init}, pictures=cluster_maps.draw)


TASK = Task(
    name="task3_netvlad", title="Shallow ConvNet + NetVLAD", epochs=100, batch_size=50, description=__doc__,
    build_model=build_model, options=NetVLADOptions, check=check_options, prepare=prepare,
    describe=lambda config: f"Shallow ConvNet + NetVLAD (K={config.options.clusters}, "
                            f"{INIT_NAMES[config.options.init]})",
    compiles=True,
    # Measured (bench/bench_speed.py): on AMX CPUs bf16 autocast makes this model slower, not faster,
    # because its NetVLAD layer runs in fp32 anyway and the casts around it cost more than the convolutions gain.
    cpu_bf16=False,
    reproduce_with={"clusters": 16},
    course_report=report_table((1.9054, 26.00, 62.31), (1.9287, 30.95, 40.48), (1.9338, 29.24, 40.48)),
    course_options={"clusters": 4, "init": "random"},  # the report's NetVLAD: K = 4, random centres, alpha 0.5
)


def main(argv=None):
    return run_task(TASK, argv)


if __name__ == "__main__":
    run_main(main)
