"""Data-folder scanning that cannot silently give wrong numbers.

- ``scan_class_folder``: ImageFolder's walk, but a directory reached twice inside one class folder (a symlink
  loop, or two links to the same directory) is an error naming the link, instead of being read over and over.
- ``align_to_train``: the eval split's labels mapped to the train split's classes by name (ImageFolder numbers
  each split's own sorted folders, so a val/ with a missing class shifts every later label).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pcl.utils.errors import PCLError


def scan_class_folder(target_dir: str, is_valid_file: Callable[[str], bool]) -> list[str]:
    """Image paths under ``target_dir`` in ``sorted(os.walk(target_dir, followlinks=True))`` order."""
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
            f"{split}/ shares no class folder with train/ (e.g. {', '.join(extra[:3])}); the kNN monitor needs "
            "the same class names in both"
        )
    warning = None
    if extra or missing:
        parts = []
        if extra:
            parts.append(
                f"{len(samples) - len(out)} images of {len(extra)} classes not in train/ are left out "
                f"({', '.join(extra[:3])})"
            )
        if missing:
            parts.append(f"{len(missing)} train classes have no {split} images ({', '.join(missing[:3])})")
        warning = f"warning: {split}/ and train/ class folders differ: {'; '.join(parts)}; labels matched by name"
    return out, warning
