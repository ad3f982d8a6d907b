"""Data-folder scanning that cannot silently give wrong numbers, fast enough for millions of files.

- ``scan_images``: every image file under a folder, in ``sorted(os.walk(...))`` order (ImageFolder's), by one
  ``os.scandir`` per directory (no ``stat`` per file). Hidden entries are never data (``is_hidden``). A directory
  reached twice (a symlink loop, or two links to the same directory) is an error naming the link, instead of
  being read over and over.
- ``align_to_train``: the eval split's labels mapped to the train split's classes by name (ImageFolder numbers
  each split's own sorted folders, so a val/ with a missing class shifts every later label).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from torchvision.datasets.folder import IMG_EXTENSIONS

from pcl.utils.errors import PCLError

IMAGE_EXTENSIONS = tuple(e.lower() for e in IMG_EXTENSIONS)
HIDDEN_DIRS = ("__MACOSX",)


def is_hidden(name: str) -> bool:
    """Names that are never data: dot files and folders (``.DS_Store``, macOS ``._x.jpg``, ``.ipynb_checkpoints``,
    ``.Trash-0``) and ``__MACOSX``."""
    return name.startswith(".") or name in HIDDEN_DIRS


def is_image_file(path: str) -> bool:
    """True for the file extensions torchvision's ImageFolder reads (case-insensitive)."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def visible_entries(path: str) -> tuple[list[str], list[str]]:
    """``(sorted sub-folder paths, sorted image file paths)`` directly in ``path``, hidden entries left out."""
    dirs, files = [], []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if is_hidden(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    dirs.append(entry.path)
                elif is_image_file(entry.name):
                    files.append(entry.path)
    except OSError as e:
        raise PCLError(f"cannot read data folder {path}: {e.strerror or e}") from None
    return sorted(dirs), sorted(files)


def scan_images(target_dir: str, is_valid_file: Callable[[str], bool] = is_image_file) -> list[str]:
    """Image paths under ``target_dir`` (recursively, links followed) in ``sorted(os.walk(target_dir))`` order."""
    visited: dict[tuple[int, int], str] = {}
    found: list[tuple[str, list[str]]] = []

    def visit(path: str, via: str | None) -> None:
        try:
            st = os.stat(path)
        except OSError as e:
            raise PCLError(f"cannot read data folder {path}: {e.strerror or e}") from None
        key = (st.st_dev, st.st_ino)
        if key in visited:
            raise PCLError(
                f"directory symlink {via} leads back to {visited[key]} (a loop or a second link to the same "
                "folder): its images would be counted again and again; remove or replace the link"
            )
        visited[key] = path
        files, dirs = [], []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if is_hidden(entry.name):
                        continue
                    if entry.is_dir(follow_symlinks=True):
                        dirs.append(entry)
                    else:
                        files.append(entry.name)
        except OSError as e:
            raise PCLError(f"cannot read data folder {path}: {e.strerror or e}") from None
        found.append((path, files))
        for d in dirs:
            visit(d.path, d.path if d.is_symlink() else via)

    visit(target_dir, target_dir)
    out = []
    for root, files in sorted(found):
        out.extend(p for p in (os.path.join(root, f) for f in sorted(files)) if is_valid_file(p))
    return out


def align_to_train(
    train_classes: list[str], eval_classes: list[str], samples: list[tuple[str, int]], split: str
) -> tuple[list[tuple[str, int]], str | None]:
    """``samples`` (labelled by ``eval_classes``) relabelled with the train class indices, and a warning
    when the class sets differ. Images of classes unknown to train are dropped; none left is an error."""
    index = {c: i for i, c in enumerate(train_classes)}
    out = [(p, index[eval_classes[t]]) for p, t in samples if eval_classes[t] in index]
    extra = sorted(set(eval_classes) - set(train_classes))
    missing = sorted(set(train_classes) - set(eval_classes))
    if not out:
        raise PCLError(
            f"{split} shares no class with the training data (e.g. {', '.join(extra[:3])}); the kNN monitor "
            "needs the same class names in both"
        )
    warning = None
    if extra or missing:
        parts = []
        if extra:
            parts.append(
                f"{len(samples) - len(out)} images of {len(extra)} classes not in train are left out "
                f"({', '.join(extra[:3])})"
            )
        if missing:
            parts.append(f"{len(missing)} train classes have no {split} images ({', '.join(missing[:3])})")
        warning = f"warning: {split} and train classes differ: {'; '.join(parts)}; labels matched by name"
    return out, warning
