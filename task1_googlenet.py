"""Task 1: ImageNet-pretrained GoogLeNet (torchvision), frozen (or fine-tuned with --finetune), with a new linear head on its 1024 features; 20 epochs, batch 100."""
from common.cli import run_main
from common.options import run_task
from common.transfer import transfer_task

TASK = transfer_task("task1_googlenet", "googlenet", __doc__)


def main(argv=None):
    return run_task(TASK, argv)


if __name__ == "__main__":
    run_main(main)
