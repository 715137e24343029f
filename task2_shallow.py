"""Task 2: the report's shallow ConvNet (Figure 8) trained from scratch, 100 epochs, batch 50."""
import argparse

from common.cli import run_main
from common.models import ShallowConvNet
from common.run_folder import add_compile_arg, add_training_args
from common.train import start_run, train_and_report

TASK = "task2_shallow"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_training_args(parser, TASK, epochs=100, batch_size=50)
    add_compile_arg(parser)
    args = parser.parse_args(argv)
    run = start_run(TASK, args)
    model = ShallowConvNet(len(run.data.classes))
    train_and_report(model, run, "Shallow ConvNet")


if __name__ == "__main__":
    run_main(main)
