"""Task 1: ImageNet-pretrained ResNet50 (torchvision), frozen (or fine-tuned with --finetune), with a new linear head on its 2048 features; 20 epochs, batch 100."""
from common.cli import run_main
from common.options import run_task
from common.task import report_table
from common.transfer import transfer_task

TASK = transfer_task("task1_resnet", "resnet50", "ResNet50", __doc__,
                     course_report=report_table((0.1447, 98.97, 100.00), (0.2758, 95.24, 100.00), (0.3347, 94.05, 97.62)))


def main(argv=None):
    return run_task(TASK, argv)


if __name__ == "__main__":
    run_main(main)
