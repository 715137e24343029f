"""Task 2: the report's shallow ConvNet (Figure 8) trained from scratch, 100 epochs, batch 50."""
from common.cli import run_main
from common.models import ShallowConvNet
from common.options import run_task
from common.task import Task, report_table

TASK = Task(
    name="task2_shallow", title="Shallow ConvNet", epochs=100, batch_size=50, description=__doc__,
    build_model=lambda config, num_classes: ShallowConvNet(num_classes),
    compiles=True,
    course_report=report_table((0.7122, 84.19, 97.25), (1.4634, 40.48, 73.81), (1.3038, 47.62, 79.76)),
)


def main(argv=None):
    return run_task(TASK, argv)


if __name__ == "__main__":
    run_main(main)
