"""Task 1: ImageNet-pretrained GoogLeNet (torchvision), frozen (or fine-tuned with --finetune), with a new linear head on its 1024 features; 20 epochs, batch 100."""
from common.cli import run_main
from common.transfer import run_transfer


def main(argv=None):
    run_transfer("googlenet", "GoogLeNet", __doc__, argv)


if __name__ == "__main__":
    run_main(main)
