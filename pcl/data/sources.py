"""Data stage, the one data resolver: a data argument -> the images to train on and, if any, to evaluate on.

Training (``pcl/cli.py``), the E-step (its loader is built from the same list), the tools and the suites all
call :func:`resolve_data`, so every one of them reads the same files in the same order with the same labels.

=========  ===================================================  ==============================================
form       looks like                                           labels; eval split
=========  ===================================================  ==============================================
split      ``ROOT/train/<class>/...`` (+ ``val/`` or ``test/``)   class folders; ``val/``, else ``test/``
classes    ``ROOT/<class>/...`` (>= 2 folders, no loose images)   class folders; none unless ``--val``
unlabeled  ``ROOT/*.jpg``, ``ROOT/a/b/*.png``, ...                 none (``--labels none`` forces it); none
list       ``LIST.txt`` (a path per line), ``LIST.csv``            the CSV's ``path,label`` column; none
=========  ===================================================  ==============================================

List paths are relative to the list's folder. ``--labels folders`` takes labels from class folders (for a list:
each file's parent folder). Hidden entries are never data (``folder_scan.is_hidden``). ``--val PATH`` (any form)
replaces the eval split; its labels are matched to the training classes by name.

Every image is counted once: the same file reached twice (a second link to a class folder, a file symlink
beside its target, a list naming one file on two lines, by resolved path) is an error naming both, and so is a
CSV giving one file two labels. Entries named like images that are not regular files (a named pipe) are skipped
with one warning line; a list naming one is an error.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from pcl.data.folder_scan import (
    IMAGE_EXTENSIONS,
    ScanState,
    align_to_train,
    non_regular,
    scan_images,
    visible_entries,
)
from pcl.utils.errors import PCLError

REPO_ROOT = Path(__file__).resolve().parents[2]  # the bundled data ships with the repository
BUNDLED_ARCHIVE = REPO_ROOT / "data" / "cifar10_subset.tar.gz"
BUNDLED_CACHE = REPO_ROOT / "data" / ".cache"
EVAL_SPLITS = ("val", "test")
LABEL_MODES = ("auto", "none", "folders")
LIST_SUFFIXES = (".txt", ".csv")
CSV_HEADERS = ("path", "file", "filename", "image", "img")


def bundled_root(archive: Path = BUNDLED_ARCHIVE, cache: Path = BUNDLED_CACHE) -> Path:
    """Extract the bundled CIFAR-10 subset once (atomically) and return its ImageFolder root."""
    name = archive.name.removesuffix(".tar.gz")
    root = cache / name
    if root.is_dir():
        return root
    if not archive.is_file():
        raise PCLError(f"bundled data archive {archive} is missing; rebuild it with tools/make_subset.py")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
    try:
        os.replace(tmp / name, root)
    except OSError:  # another process won the race
        if not root.is_dir():
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    return root


@dataclass(frozen=True)
class ImageSet:
    """Resolved images: ``paths (N,)``, ``labels (N,)`` indexing ``classes`` (None: unlabeled), the detected
    ``form``, ``where`` (the folder scanned or the list file) and ``how`` (why, for the one-line description)."""

    paths: list[str]
    labels: list[int] | None
    classes: list[str]
    form: str
    where: Path
    how: str
    skipped: tuple[str, ...] = ()  # image-named entries left out because they are not regular files

    @property
    def labeled(self) -> bool:
        """True when every image has a class label."""
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.paths)

    def samples(self) -> list[tuple[str, int]]:
        """``[(path, label)]`` as torchvision's ImageFolder has them; label -1 when unlabeled."""
        return list(zip(self.paths, self.labels if self.labels is not None else [-1] * len(self.paths), strict=True))

    def identity(self) -> dict[str, object]:
        """``{"count", "sha256", "form"}``: the hash covers every path (relative to the data folder, or to the
        list's folder) and label in order, so a moved copy of the same data set has the same identity."""
        base = str(self.where if self.form != "list" else self.where.parent) + os.sep
        h = hashlib.sha256()
        labels = self.labels if self.labels is not None else [-1] * len(self.paths)
        for p, t in zip(self.paths, labels, strict=True):
            h.update(f"{p.removeprefix(base)}\t{t}\n".encode())
        return {"count": len(self.paths), "sha256": h.hexdigest(), "form": self.form}

    def describe(self) -> str:
        """``12,345 images, unlabeled (no class folders in ROOT)`` or ``48 images in 3 classes (...)``; one class
        says what it turns off."""
        if self.labeled and len(self.classes) == 1:
            return f"{len(self):,} images in 1 class ({self.how}; with 1 class, cluster metrics and kNN are off)"
        if self.labeled:
            return f"{len(self):,} images in {len(self.classes)} classes ({self.how})"
        return f"{len(self):,} images, unlabeled ({self.how})"

    def skipped_warning(self) -> str | None:
        """One line about the image-named entries that were left out (not regular files), or None."""
        if not self.skipped:
            return None
        n = len(self.skipped)
        return (
            f"warning: {n} entr{'y' if n == 1 else 'ies'} named like an image but not a regular file "
            f"{'was' if n == 1 else 'were'} skipped under {self.where} (e.g. {self.skipped[0]})"
        )


@dataclass(frozen=True)
class DataSource:
    """The training images, the eval images (or None, with ``eval_note`` saying why) and a warning to show."""

    train: ImageSet
    eval: ImageSet | None
    eval_note: str | None = None
    warning: str | None = None

    def describe(self) -> str:
        """The one line printed at start, e.g. ``data: 300 images, unlabeled (no class folders in X); no eval set``."""
        ev = f"eval: {self.eval.describe()}" if self.eval is not None else f"no eval set ({self.eval_note})"
        return f"data: {self.train.describe()}; {ev}"

    def knn_off_reason(self) -> str | None:
        """Why the kNN monitor cannot run on this data (None: it can)."""
        if not self.train.labeled:
            return "the training data has no labels"
        if len(self.train.classes) < 2:
            return "the training data has 1 class"
        if self.eval is None:
            return f"no eval set ({self.eval_note})"
        if not self.eval.labeled:
            return f"the eval set {self.eval.where} has no labels"
        return None

    def identity(self) -> dict[str, object]:
        """The training images' identity (``ImageSet.identity``), recorded in checkpoints."""
        return self.train.identity()


def _no_images(where: Path, detail: str = "") -> PCLError:
    exts = " ".join(IMAGE_EXTENSIONS[:4])
    return PCLError(f"no images found under {where}{detail} (looked for {exts} ...; hidden files are skipped)")


def _folder_set(root: Path, labels: str, form: str = "classes") -> ImageSet:
    """Images of a folder: class folders (``labels`` folders, or auto-detected) or unlabeled (recursive)."""
    dirs, files = visible_entries(str(root))
    class_folders = labels == "folders" or (labels == "auto" and not files and len(dirs) >= 2)
    if not class_folders:
        if labels == "none":
            how = f"--labels none, {root}"
        elif files:
            how = f"images directly in {root}"
        else:
            how = f"no class folders in {root}" if not dirs else f"one folder in {root}, not classes"
        state = ScanState()
        paths = scan_images(str(root), state=state)
        if not paths:
            raise _no_images(root)
        return ImageSet(paths, None, [], "unlabeled", root, how, tuple(state.skipped))
    if files:
        raise PCLError(
            f"--labels folders: {root} holds {len(files)} images outside class folders (e.g. {files[0]}); "
            "move them into a class folder or use --labels none"
        )
    if not dirs:
        raise _no_images(root, ": --labels folders needs class folders")
    classes = [os.path.basename(d) for d in dirs]
    paths: list[str] = []
    targets: list[int] = []
    empty = []
    state = ScanState()  # one for every class folder: a folder or image reached from two classes is found
    for i, d in enumerate(dirs):
        found = scan_images(d, state=state)
        if not found:
            empty.append(classes[i])
        paths.extend(found)
        targets.extend([i] * len(found))
    if not paths:
        raise _no_images(root)
    if empty:
        raise _no_images(
            root, f": the class folders {', '.join(empty[:5])} hold no images (use --labels none for unlabeled data)"
        )
    how = f"{len(classes)} class folder{'s' * (len(classes) != 1)} in {root}"
    return ImageSet(paths, targets, classes, form, root, how, tuple(state.skipped))


def _class_names(names: list[str]) -> list[str]:
    """Sorted distinct label names; numerically when every one is an integer (so "10" follows "9")."""
    distinct = set(names)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def _read_list(path: Path) -> list[tuple[int, str, str | None]]:
    """``[(line number, path, label or None)]`` of a ``.txt`` or ``.csv`` list; a malformed CSV raises."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PCLError(f"cannot read file list {path}: {e}") from None
    rows: list[tuple[int, str, str | None]] = []
    if path.suffix.lower() == ".txt":
        for i, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if s and not s.startswith("#"):
                rows.append((i, s, None))
        return rows
    for i, row in enumerate(csv.reader(text.splitlines()), 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if not rows and i == 1 and cells[0].lower() in CSV_HEADERS:
            continue  # a header line
        if len(cells) > 2:
            raise PCLError(f"{path} line {i}: expected path[,label], got {len(cells)} columns: {','.join(cells)}")
        if not cells[0]:
            raise PCLError(f"{path} line {i}: empty path")
        label = cells[1] if len(cells) == 2 else None
        if label == "":
            raise PCLError(f"{path} line {i}: empty label (label every row, or no row)")
        rows.append((i, cells[0], label))
    with_label = [r for r in rows if r[2] is not None]
    if with_label and len(with_label) != len(rows):
        bare = next(r for r in rows if r[2] is None)
        raise PCLError(
            f"{path} line {bare[0]} has no label but line {with_label[0][0]} has one: label every row, or no row"
        )
    return rows


def _once(
    path: Path, rows: list[tuple[int, str, str | None]], paths: list[str]
) -> tuple[list[tuple[int, str, str | None]], list[str]]:
    """``rows`` and their ``paths`` when each file appears once (by resolved path); else a ``PCLError``: a file
    under two labels names both lines and labels, a repeated file the count and the first pair of lines."""
    first: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    dirs: dict[str, str] = {}
    for j, p in enumerate(paths):
        if os.path.islink(p):
            real = os.path.realpath(p)
        else:  # one realpath per folder, not per file
            head, tail = os.path.split(p)
            real = os.path.join(dirs.setdefault(head, os.path.realpath(head)), tail)
        i = first.setdefault(real, j)
        if i == j:
            continue
        if rows[i][2] != rows[j][2]:
            raise PCLError(
                f"file list {path} gives {paths[j]} two labels: {rows[i][2]!r} on line {rows[i][0]} and "
                f"{rows[j][2]!r} on line {rows[j][0]}; an image has one label"
            )
        repeats.append((i, j))
    if repeats:
        i, j = repeats[0]
        raise PCLError(
            f"file list {path} names {len(repeats)} file(s) more than once, e.g. {paths[j]} on lines {rows[i][0]} "
            f"and {rows[j][0]}: every image must appear once (remove the repeated lines)"
        )
    return rows, paths


def _list_set(path: Path, labels: str) -> ImageSet:
    """Images named by a ``.txt`` / ``.csv`` list (paths relative to its folder)."""
    rows = _read_list(path)
    if not rows:
        raise PCLError(f"no images found in file list {path} (it names no file)")
    base = path.parent
    paths = [os.path.normpath(os.path.join(base, os.path.expanduser(p))) for _, p, _ in rows]
    missing = [(i, p) for (i, _, _), p in zip(rows, paths, strict=True) if not os.path.isfile(p)]
    odd = [(i, p, why) for i, p in missing if (why := non_regular(p)) is not None]
    if odd:
        line, first, why = odd[0]
        raise PCLError(f"file list {path} line {line} names {first}, which is {why}, not an image file")
    if missing:
        line, first = missing[0]
        raise PCLError(f"file list {path} names {len(missing)} missing files, e.g. {first} (line {line})")
    rows, paths = _once(path, rows, paths)
    names: list[str] | None = None
    if labels == "folders":
        names = [os.path.basename(os.path.dirname(p)) for p in paths]
    elif labels == "auto" and rows[0][2] is not None:
        names = [label for _, _, label in rows]  # type: ignore[misc]
    if names is None:
        return ImageSet(paths, None, [], "list", path, f"list {path}")
    classes = _class_names(names)
    index = {c: i for i, c in enumerate(classes)}
    return ImageSet(paths, [index[n] for n in names], classes, "list", path, f"list {path}")


def image_set(path: str | Path, labels: str = "auto") -> ImageSet:
    """One set of images from a folder (class folders or unlabeled) or a ``.txt`` / ``.csv`` file list."""
    if labels not in LABEL_MODES:
        raise PCLError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    p = check_data_path(path)
    if p.is_file():
        return _list_set(p, labels)
    return _folder_set(p, labels)


def check_data_path(path: str | Path) -> Path:
    """``path`` (``~`` expanded) when it can be a data argument: an existing folder or ``.txt`` / ``.csv`` list;
    else the one-line ``PCLError`` :func:`resolve_data` gives (a cheap check, nothing is scanned)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PCLError(f"data path {p} does not exist")
    if p.is_file() and p.suffix.lower() not in LIST_SUFFIXES:
        raise PCLError(f"data path {p} is a file but not a .txt or .csv file list")
    return p


def _aligned(train: ImageSet, ev: ImageSet, name: str) -> tuple[ImageSet, str | None]:
    """``ev`` relabelled with ``train``'s class indices (by name); images of unknown classes dropped."""
    if not (train.labeled and ev.labeled):
        return ev, None
    samples, warning = align_to_train(train.classes, ev.classes, ev.samples(), name)
    paths, targets = [p for p, _ in samples], [t for _, t in samples]
    return replace(ev, paths=paths, labels=targets, classes=list(train.classes)), warning


def resolve_data(data: str | Path | None, labels: str = "auto", val: str | Path | None = None) -> DataSource:
    """The training images of ``data`` (None: the bundled subset) and the eval images (``val``, else the split's).

    ``labels``: auto | none | folders (module doc). Raises ``PCLError`` with one line for anything unusable.
    """
    if labels not in LABEL_MODES:
        raise PCLError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    root = bundled_root() if data is None else Path(data).expanduser()
    if not root.exists():
        raise PCLError(f"data path {root} does not exist")
    ev, note, name = None, "", ""
    if root.is_dir() and (root / "train").is_dir():
        train = _folder_set(root / "train", labels, form="split")
        if train.form == "unlabeled":
            train = replace(train, form="split")
        splits = [root / s for s in EVAL_SPLITS if (root / s).is_dir()]
        if val is None and splits:
            if train.labeled:
                ev, name = _folder_set(splits[0], "folders", form="split"), f"{splits[0].name}/"
            else:
                note = f"{splits[0].name}/ unused: the training data has no labels"
        elif val is None:
            note = f"{root} has no val/ or test/ split; --val PATH adds one"
    else:
        train = image_set(root, labels)
        note = "--val PATH adds one"
    if val is not None:
        ev, name = image_set(val, "auto"), f"--val {val}"
    warning = None
    if ev is not None:
        ev, warning = _aligned(train, ev, name)
    skipped = [w for w in (train.skipped_warning(), ev.skipped_warning() if ev is not None else None) if w]
    warning = "\n".join([*([warning] if warning else []), *skipped]) or None
    return DataSource(train, ev, None if ev is not None else note, warning)


def check_knn_data(source: DataSource, knn_asked: bool, val_given: bool) -> None:
    """``--val`` given for the kNN monitor but unusable for it: one ``PCLError`` line (else nothing)."""
    reason = source.knn_off_reason()
    if val_given and knn_asked and reason is not None:
        raise PCLError(
            f"--val is given for the kNN monitor, but {reason}: kNN needs labels on the training and the eval "
            "images; give labelled data or turn the monitor off with --knn-freq 0"
        )
