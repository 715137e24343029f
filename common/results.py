"""What a run shows: the report's metric table, the history, the loss, accuracy and confusion figures
(written atomically, through common.files), and the test predictions the report reads back."""
import csv
import hashlib
import io
import json
import re
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common.files import atomic_write, open_regular, read_json  # noqa: E402

# Class names, titles and paths are the user's: every figure draws them as they are, never as math
# text or TeX, which end in a traceback on a class named "$\undefined$" (after the metrics were written).
matplotlib.rcParams.update({"text.parse_math": False, "text.usetex": False})

ROWS = (("train", "Training"), ("validation", "Validation"), ("test", "Testing"))
COLUMNS = (("loss", "Logloss"), ("top1", "Top 1 accuracy"), ("top3", "Top 3 accuracy"))
MAX_DRAWN_CLASSES = 30  # a confusion figure's cells stay readable up to about this many classes
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_top1", "train_top3",
                  "val_loss", "val_top1", "val_top3", "seconds")


def markdown_text(text):
    """`text` (a class name, title or path) as Markdown shows it, in a table cell or a heading: every
    character Markdown, GitHub's math or HTML would read (emphasis, a link, a cell's end, `$`, a tag,
    an entity) backslash-escaped, and line breaks, which would end a table row, made spaces."""
    return re.sub(r"[\\`*_\[\]<>|&$~]", r"\\\g<0>", re.sub(r"[\r\n]+", " ", str(text)))


def markdown_code(text):
    """`text` as inline code on one line, whatever backticks it holds: fenced by one more than its longest run."""
    text = re.sub(r"[\r\n]+", " ", text)
    fence = "`" * (1 + max(map(len, re.findall("`+", text)), default=0))
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""  # Markdown strips it: a backtick beside the fence
    return f"{fence}{pad}{text}{pad}{fence}"


def format_cell(value, digits, unit=""):
    """A number, or a (mean, std) pair from several seeds."""
    if isinstance(value, (tuple, list)):
        mean, std = value
        return f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"
    return f"{value:.{digits}f}{unit}"


def format_table(metrics):
    """The report's layout: rows Training/Validation/Testing; Logloss, Top 1, Top 3 (in %)."""
    lines = ["| | " + " | ".join(title for _, title in COLUMNS) + " |", "|---|---:|---:|---:|"]
    for key, title in ROWS:
        m = metrics[key]
        lines.append(f"| {title} | {format_cell(m['loss'], 4)} | {format_cell(m['top1'], 2, ' %')} "
                     f"| {format_cell(m['top3'], 2, ' %')} |")
    return "\n".join(lines)


def mean_std(runs):
    """Per split and metric, (mean, sample std) over runs; std is 0 for a single run."""
    def stats(values):
        values = torch.tensor(values, dtype=torch.float64)
        return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0
    return {split: {metric: stats([run[split][metric] for run in runs]) for metric in runs[0][split]}
            for split in runs[0]}


def trained_by(config):
    """How many processes trained a run (torchrun's ranks draw other dropout masks than one process),
    as a few words for headers: "1 process", "2 processes on cpu", "2 processes on cuda:0, cuda:1"."""
    processes = config.get("processes")
    if not isinstance(processes, int) or isinstance(processes, bool):
        return "process count not recorded"  # a run from before config.json recorded it
    if processes == 1:
        return "1 process"
    devices = config.get("rank_devices")
    devices = sorted(set(map(str, devices))) if isinstance(devices, list) else [str(config.get("device", "?"))]
    return f"{processes} processes on {', '.join(devices)}"


def write_metrics(out, metrics, title, note=None):
    """metrics.md (the table under its title and `note`, e.g. trained_by's), metrics.json, metrics.csv."""
    out = Path(out)
    heading = f"**{markdown_text(title)}**" + (f" ({markdown_text(note)})" if note else "")
    atomic_write(out / "metrics.md", f"{heading}\n\n{format_table(metrics)}\n")
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["split"] + [title for _, title in COLUMNS])
    for key, title in ROWS:
        writer.writerow([title] + [f"{metrics[key][c]:.6g}" for c, _ in COLUMNS])
    atomic_write(out / "metrics.csv", rows.getvalue())


def write_history(out, history):
    rows = io.StringIO()
    writer = csv.DictWriter(rows, HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(Path(out) / "history.csv", rows.getvalue())


def write_config(out, config):
    atomic_write(Path(out) / "config.json", json.dumps(config, indent=2, default=str) + "\n")


def save_figure(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def curve(ax, histories, key, **style):
    """One line per metric: the run itself, or the mean over seeds with a +-1 std band."""
    epochs = [int(float(h["epoch"])) for h in histories[0]]  # rows read back from history.csv hold strings
    values = torch.tensor([[float(h[key]) for h in history] for history in histories])
    mean = values.mean(dim=0)
    line, = ax.plot(epochs, mean, **style)
    if len(histories) > 1:
        std = values.std(dim=0)
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)


def plot_history(out, histories, title):
    """The report's figure pair, logloss and top-1/top-3 accuracy, train and validation.

    `histories` holds one run's per-epoch rows, or several (seeds): then mean +- std.
    """
    note = f" (mean ± std of {len(histories)} seeds)" if len(histories) > 1 else ""
    fig, ax = plt.subplots(figsize=(6, 4))
    curve(ax, histories, "train_loss", label="train")
    curve(ax, histories, "val_loss", label="validation")
    ax.set(xlabel="epoch", ylabel="logloss", title=f"{title}: logloss{note}")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, Path(out) / "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for split, name, color in (("train", "train", "tab:blue"), ("val", "validation", "tab:orange")):
        curve(ax, histories, f"{split}_top1", color=color, label=f"{name} top-1")
        curve(ax, histories, f"{split}_top3", color=color, ls="--", label=f"{name} top-3")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 101), title=f"{title}: accuracy{note}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, Path(out) / "accuracy.png")


def read_history(out):
    """history.csv's rows; an OSError where it is missing or not a regular file, a ValueError where
    csv cannot parse it (a field over csv's 128 KB limit, say)."""
    path = Path(out) / "history.csv"
    with open_regular(path, newline="") as f:
        try:
            return list(csv.DictReader(f))
        except csv.Error as e:
            raise ValueError(f"{path} is damaged: {e}") from None


def confusion_matrix(labels, predictions, num_classes):
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    counts.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    return counts


def most_confused(counts, k):
    """The indices (in class order) of the k classes with the most errors, as true or as predicted class."""
    errors = counts.sum(dim=0) + counts.sum(dim=1) - 2 * counts.diagonal()
    return errors.argsort(descending=True, stable=True)[:k].sort().values


def plot_confusion(path, counts, classes, title, whole_matrix=None):
    """The confusion matrix as a figure of MAX_DRAWN_CLASSES classes at most: above that the cells
    could not be read, and the figure's size (and the memory to draw it) would grow with the square
    of the class count (800 classes: killed at 24 GB). Then the most confused classes are drawn, as
    the title and one printed line say; `whole_matrix` names where every class is (a CSV)."""
    n = len(classes)
    if n > MAX_DRAWN_CLASSES:
        shown = most_confused(counts, MAX_DRAWN_CLASSES)
        counts, classes = counts[shown][:, shown], [classes[i] for i in shown]
        note = f"the {MAX_DRAWN_CLASSES} most confused of {n} classes" + \
            (f"; all in {Path(whole_matrix).name}" if whole_matrix else "")
        title = f"{title}\n({note})"
        print(f"{Path(path).name} draws {note}")
        n = MAX_DRAWN_CLASSES
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    counts = counts.numpy()
    ax.imshow(counts, cmap="Blues")
    for i in range(n):
        for j in range(n):
            value = int(counts[i, j])
            color = "white" if value > counts.max() / 2 else "black"
            ax.text(j, i, value, ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    save_figure(fig, path)


def write_confusion_csv(path, counts, classes):
    """The whole confusion matrix, whatever the class count: a row per true class, a column per predicted one."""
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classes])
    writer.writerows([name, *row] for name, row in zip(classes, counts.tolist()))
    atomic_write(path, rows.getvalue())


def write_predictions(path, split, log_probs, classes):
    """Each test image's true class and predicted probabilities: what REPORT.md's intervals, paired
    tests, per-class accuracies and pictures of mistakes are computed from. Returns the file's SHA-256,
    which the run records in config.json: an edit made since (one true class changed) is then found."""
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["path", "sha1", "true class", *classes])
    probabilities = log_probs.exp().tolist()
    for path_, digest, label, p in zip(split.paths, split.digests, split.labels.tolist(), probabilities):
        writer.writerow([path_, digest, classes[label], *(f"{q:.6g}" for q in p)])
    data = rows.getvalue().encode("utf-8", "surrogateescape")  # the bytes atomic_write writes
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def read_predictions(run):
    """A run's test_predictions.csv as (paths, sha1s, true labels, N x C probabilities, classes);
    an OSError where it is missing (a run from before runs wrote it), a ValueError where it is
    damaged or is not what the run recorded in its config.json (check_predictions)."""
    path, recorded_in = Path(run) / "test_predictions.csv", Path(run) / "config.json"
    try:
        config = read_json(recorded_in) if recorded_in.exists() else {}  # none: nothing recorded to check against
    except ValueError:  # not JSON
        config = None
    if not isinstance(config, dict):
        raise ValueError(f"{recorded_in} is damaged")
    with open_regular(path, "rb") as f:
        data = f.read()
    recorded = config.get("test_predictions_sha256")
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise ValueError(f"{path} is not the file its run wrote: its SHA-256 differs from the one in config.json")
    try:
        header, *rows = list(csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline="")))
        if header[:3] != ["path", "sha1", "true class"] or any(len(row) != len(header) for row in rows):
            raise ValueError("not a row of path, sha1, true class and a probability per class each")
        probabilities = torch.tensor([[float(v) for v in row[3:]] for row in rows],
                                     dtype=torch.float64).reshape(len(rows), len(header) - 3)
    except (csv.Error, ValueError) as e:  # ValueError also: an empty file, a probability that is no number
        raise ValueError(f"{path} is damaged: {e}") from None
    classes = header[3:]
    check_predictions(path, [row[2] for row in rows], probabilities, classes, config)
    labels = torch.tensor([classes.index(row[2]) for row in rows], dtype=torch.long)
    return [row[0] for row in rows], [row[1] for row in rows], labels, probabilities, classes


def check_predictions(path, true_classes, probabilities, classes, config):
    """The checks a run from before runs recorded their file's SHA-256 gets too: its classes and test
    image count are its config.json's, every true class is one of them, and each row's probabilities
    are numbers from 0 to 1 summing to 1 (up to the 6 digits each is written with)."""
    sizes = config.get("split_sizes") if isinstance(config.get("split_sizes"), dict) else {}
    unknown = sorted(set(true_classes) - set(classes))
    if config.get("classes", classes) != classes:
        why = "other classes than its run's config.json"
    elif sizes.get("test", len(true_classes)) != len(true_classes):
        why = f"{len(true_classes)} rows for its run's {sizes['test']} test images"
    elif unknown:
        why = f"a true class that is none of its classes ({unknown[0]!r})"
    elif not (torch.isfinite(probabilities).all() and ((probabilities >= 0) & (probabilities <= 1)).all()):
        why = "a probability that is not a number from 0 to 1"
    elif ((probabilities.sum(dim=1) - 1).abs() > 1e-3 + 1e-6 * len(classes)).any():  # each rounded by <= 5e-7
        why = "a row of probabilities that does not sum to 1"
    else:
        return
    raise ValueError(f"{path} is damaged: {why}")
