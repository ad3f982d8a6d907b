"""Data-folder scanning that cannot silently give wrong numbers, fast enough for millions of files.

- ``scan_images``: every image file under a folder, in ``sorted(os.walk(...))`` order (ImageFolder's), by one
  ``os.scandir`` per directory (no ``stat`` per regular file; one ``realpath`` per directory and per file
  symlink). Hidden entries are never data (``is_hidden``). A directory reached twice (a symlink loop, or two
  links to the same directory, also across the class folders of one data set when they share a
  :class:`ScanState`) is an error naming the link, and so is one image reached by two paths (a file symlink
  beside its target): every image is counted once. Entries named like images that are not regular files (a
  named pipe, a socket, a device) are skipped and counted in :attr:`ScanState.skipped`: opening one would hang.
- ``align_to_train``: the eval split's labels mapped to the train split's classes by name (ImageFolder numbers
  each split's own sorted folders, so a val/ with a missing class shifts every later label).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

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
    """``(sorted sub-folder paths, sorted image file paths)`` directly in ``path``, hidden entries and image-named
    entries that are not regular files (named pipes, sockets) left out."""
    dirs, files = [], []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if is_hidden(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    dirs.append(entry.path)
                elif is_image_file(entry.name) and entry.is_file(follow_symlinks=True):
                    files.append(entry.path)
    except OSError as e:
        raise PCLError(f"cannot read data folder {path}: {e.strerror or e}") from None
    return sorted(dirs), sorted(files)


@dataclass
class ScanState:
    """What several :func:`scan_images` calls over one data set share: the directories visited (by device and
    inode), every image's resolved path, and the image-named entries skipped because they are not regular files."""

    visited: dict[tuple[int, int], str] = field(default_factory=dict)
    resolved: dict[str, str] = field(default_factory=dict)  # resolved path -> the path it was first found by
    skipped: list[str] = field(default_factory=list)


def _kind(st: os.stat_result) -> str:
    """A non-regular file's kind in words (``a named pipe``)."""
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device")):
        if test(st.st_mode):
            return name
    return "a device" if stat.S_ISBLK(st.st_mode) else "not a regular file"


def non_regular(path: str) -> str | None:
    """Why ``path`` is not a regular file (links followed), e.g. ``a named pipe``; None for a regular or missing one."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing or a broken link: the reader of the file names it
    return None if stat.S_ISREG(st.st_mode) else _kind(st)


def _resolve_files(root: str, names: list[tuple[str, bool, bool]], state: ScanState) -> list[str]:
    """The paths of ``names`` ``(name, is symlink, is regular)`` in folder ``root`` that are images to read; a
    second path to an image already found is a ``PCLError``, a non-regular file goes to ``state.skipped``."""
    real_root = os.path.realpath(root)
    out = []
    for name, link, regular in names:
        path = os.path.join(root, name)
        if link:
            why = non_regular(path)
            if why is not None:
                state.skipped.append(f"{path} ({why})")
                continue
            real = os.path.realpath(path)
        elif not regular:
            state.skipped.append(f"{path} ({non_regular(path) or 'not a regular file'})")
            continue
        else:
            real = os.path.join(real_root, name)
        first = state.resolved.setdefault(real, path)
        if first != path:
            raise PCLError(
                f"{path} and {first} are the same image ({real}): it would be counted twice; remove the link or "
                "the copy so that every image appears once"
            )
        out.append(path)
    return out


def scan_images(
    target_dir: str, is_valid_file: Callable[[str], bool] = is_image_file, state: ScanState | None = None
) -> list[str]:
    """Image paths under ``target_dir`` (recursively, links followed) in ``sorted(os.walk(target_dir))`` order.

    ``state``: shared by the scans of one data set (its class folders), so that a folder or an image reached
    from two of them is found (module docstring); a fresh one by default.
    """
    state = ScanState() if state is None else state
    visited = state.visited
    found: list[tuple[str, list[tuple[str, bool, bool]]]] = []

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
                    else:  # d_type: no stat for a regular file
                        files.append((entry.name, entry.is_symlink(), entry.is_file(follow_symlinks=False)))
        except OSError as e:
            raise PCLError(f"cannot read data folder {path}: {e.strerror or e}") from None
        found.append((path, files))
        for d in dirs:
            visit(d.path, d.path if d.is_symlink() else via)

    visit(target_dir, target_dir)
    out = []
    for root, files in sorted(found):
        valid = [f for f in sorted(files) if is_valid_file(os.path.join(root, f[0]))]
        out.extend(_resolve_files(root, valid, state))
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
