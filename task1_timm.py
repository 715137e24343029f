"""Task 1 on any timm model: its pretrained weights (from timm's cache, downloaded there when missing and
online, or --weights FILE), frozen (or fine-tuned with --finetune), with a new linear head on its features;
20 epochs, batch 100. The model's own input normalisation (pretrained_cfg's mean and std) is applied to the
report's 224 x 224 crops; a model built for a fixed size is built for 224 x 224 (timm resamples its position
embeddings), or refused in one line where timm cannot.

    python task1_timm.py --model convnext_tiny --data data/demo_split
"""
from common.cli import run_main
from common.options import run_task
from common.transfer import timm_task

TASK = timm_task("task1_timm", __doc__)


def main(argv=None):
    return run_task(TASK, argv)


if __name__ == "__main__":
    run_main(main)
