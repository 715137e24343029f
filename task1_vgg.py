"""Task 1: ImageNet-pretrained VGG16 (torchvision), frozen (or fine-tuned with --finetune), with a new linear head on the 4096 features of its second fully connected layer; 20 epochs, batch 100."""
from common.cli import run_main
from common.transfer import run_transfer


def main(argv=None):
    run_transfer("vgg16", "VGG16", __doc__, argv)


if __name__ == "__main__":
    run_main(main)
