"""The earlier commit that bench/bench_speed.py, bench/bench_memory.py and studies/same_science.py
compare this checkout with: the tasks they train on both sides, and that commit's files."""
import subprocess

# trained by both sides, each with the options reproduce.py gives it (its Task's reproduce_with)
COMPARED_TASKS = ("task2_shallow", "task3_netvlad")


def checkout(repo, commit, folder):
    """The files of `commit` of the repository `repo` in `folder`, without touching its work tree."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder
