"""The data resolver: every data form, hidden entries, file lists, data identity, and image decoding."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets

from pcl.data.datasets import IndexedImageFolder, IndexedImages
from pcl.data.decode import load_rgb
from pcl.data.image_cache import ImageCache
from pcl.data.sources import check_knn_data, image_set, resolve_data
from pcl.utils.errors import PCLError
from tests.helpers import make_image_folder


def flatten(src: Path, dst: Path) -> Path:
    """Copy every image of ``src/<class>/`` into one folder ``dst`` (names made unique by the class)."""
    dst.mkdir(parents=True)
    for p in sorted(src.rglob("*.jpg")):
        shutil.copy(p, dst / f"{p.parent.name}_{p.name}")
    return dst


def add_hidden_entries(root: Path) -> None:
    """The litter of macOS, Jupyter and desktop trash folders, none of which is data."""
    (root / "._0000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not a JPEG")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    for hidden in (".Trash-0", ".ipynb_checkpoints", "__MACOSX"):
        make_image_folder(root / hidden, per_class=2, classes=1)


# ---------------------------------------------------------------- forms
def test_split_form_keeps_todays_labels_and_eval_split(tiny_data: Path) -> None:
    src = resolve_data(str(tiny_data))
    ref = datasets.ImageFolder(str(tiny_data / "train"))
    assert src.train.samples() == ref.samples and src.train.classes == ref.classes
    assert src.train.form == "split" and src.eval is not None and len(src.eval) == 12
    assert src.eval.samples() == datasets.ImageFolder(str(tiny_data / "test")).samples
    assert src.knn_off_reason() is None
    assert src.describe().startswith("data: 48 images in 3 classes")


def test_class_folders_without_split_give_the_same_labels(tiny_data: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_data / "train", tmp_path / "photos"))
    src = resolve_data(str(root))
    ref = resolve_data(str(tiny_data)).train
    assert src.train.form == "classes" and src.train.classes == ref.classes
    assert src.train.labels == ref.labels
    assert [Path(p).relative_to(root) for p in src.train.paths] == [
        Path(p).relative_to(tiny_data / "train") for p in ref.paths
    ]
    assert src.eval is None and "no eval set" in src.describe()
    assert src.knn_off_reason() is not None


def test_flat_folder_is_unlabeled(tiny_data: Path, tmp_path: Path) -> None:
    root = flatten(tiny_data / "train", tmp_path / "flat")
    src = resolve_data(str(root))
    assert src.train.form == "unlabeled" and src.train.labels is None and len(src.train) == 48
    assert src.describe().startswith("data: 48 images, unlabeled (images directly in")
    assert src.knn_off_reason() == "the training data has no labels"
    assert set(IndexedImages(src.train).targets) == {-1}


def test_nested_folder_with_loose_images_is_unlabeled(tiny_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "nested"
    shutil.copytree(tiny_data / "train" / "class0", root / "2019" / "a")
    shutil.copytree(tiny_data / "train" / "class1", root / "2020")
    shutil.copy(tiny_data / "train" / "class2" / "0000.jpg", root / "cover.jpg")
    src = resolve_data(str(root))
    assert src.train.form == "unlabeled" and len(src.train) == 33
    ends = (src.train.paths[0], src.train.paths[1], src.train.paths[-1])  # os.walk order: a folder's files first
    assert ends[0].endswith("/cover.jpg") and ends[1].endswith("2019/a/0000.jpg") and ends[2].endswith("2020/0015.jpg")


def test_single_subfolder_is_not_a_class(tiny_data: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_data / "train" / "class0", tmp_path / "root" / "images")
    src = resolve_data(str(tmp_path / "root"))
    assert src.train.labels is None and "one folder" in src.train.how


def test_labels_flag_forces_either_reading(tiny_data: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_data / "train", tmp_path / "photos"))
    forced = resolve_data(str(root), labels="none")
    assert forced.train.labels is None and len(forced.train) == 48 and "--labels none" in forced.describe()
    shutil.copytree(tiny_data / "train" / "class0", tmp_path / "one" / "cats")
    one = resolve_data(str(tmp_path / "one"), labels="folders")
    assert one.train.classes == ["cats"] and one.train.labels == [0] * 16
    with pytest.raises(PCLError, match="outside class folders"):
        resolve_data(str(flatten(tiny_data / "train", tmp_path / "flat")), labels="folders")


def test_hidden_entries_are_never_data(tiny_data: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    for d in (root / "train", root / "train" / "class1", root / "test"):
        add_hidden_entries(d)
    src = resolve_data(str(root))
    assert len(src.train) == 48 and src.train.classes == ["class0", "class1", "class2"]
    assert len(src.eval) == 12
    assert not any("/." in p or "__MACOSX" in p for p in src.train.paths + src.eval.paths)
    flat = flatten(tiny_data / "train", tmp_path / "flat")
    add_hidden_entries(flat)
    assert len(resolve_data(str(flat)).train) == 48
    assert IndexedImageFolder(root / "train").classes == ["class0", "class1", "class2"]


def test_split_with_unlabeled_train_leaves_the_eval_split_unused(tiny_data: Path) -> None:
    src = resolve_data(str(tiny_data), labels="none")
    assert src.train.labels is None and src.eval is None and "test/ unused" in src.describe()


# ---------------------------------------------------------------- file lists
def test_txt_list_relative_to_its_folder(tiny_data: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_data / "train", tmp_path / "imgs"))
    ref = resolve_data(str(root)).train
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lines = ["# my images", "", *(f"../imgs/{Path(p).relative_to(root)}" for p in ref.paths)]
    lst.write_text("\n".join(lines) + "\n")
    src = resolve_data(str(lst))
    assert src.train.form == "list" and src.train.paths == ref.paths and src.train.labels is None
    by_folder = resolve_data(str(lst), labels="folders").train
    assert by_folder.labels == ref.labels and by_folder.classes == ref.classes


def test_csv_list_labels_match_the_class_folders(tiny_data: Path, tmp_path: Path) -> None:
    root = tiny_data / "train"
    ref = resolve_data(str(root)).train
    lst = tmp_path / "train.csv"
    rows = [f"{p},{ref.classes[t]}" for p, t in zip(ref.paths, ref.labels, strict=True)]
    lst.write_text("path,label\n" + "\n".join(reversed(rows)) + "\n")
    src = resolve_data(str(lst))
    assert src.train.classes == ref.classes
    assert list(zip(src.train.paths, src.train.labels, strict=True)) == list(reversed(ref.samples()))
    assert resolve_data(str(lst), labels="none").train.labels is None


def test_numeric_csv_labels_sort_as_numbers(tiny_data: Path, tmp_path: Path) -> None:
    paths = sorted(str(p) for p in (tiny_data / "train").rglob("*.jpg"))[:12]
    lst = tmp_path / "l.csv"
    lst.write_text("".join(f"{p},{i}\n" for i, p in enumerate(paths)))
    src = image_set(lst)
    assert src.classes == [str(i) for i in range(12)] and src.labels == list(range(12))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{a},cat\n{b}\n", "line 2 has no label but line 1 has one"),
        ("{a},cat,extra\n", "expected path\\[,label\\], got 3 columns"),
        ("{a},\n", "line 1: empty label"),
        ("{a}\nmissing.jpg\ngone/x.png\n", "names 2 missing files, e.g. .*missing.jpg \\(line 2\\)"),
        ("# nothing\n", "names no file"),
    ],
)
def test_bad_lists_are_one_line_errors(tiny_data: Path, tmp_path: Path, text: str, message: str) -> None:
    a, b = sorted(str(p) for p in (tiny_data / "train").rglob("*.jpg"))[:2]
    lst = tmp_path / "l.csv"
    lst.write_text(text.format(a=a, b=b))
    with pytest.raises(PCLError, match=message):
        resolve_data(str(lst))


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(PCLError, match="does not exist"):
        resolve_data(str(tmp_path / "nope"))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(PCLError, match=r"not a \.txt or \.csv file list"):
        resolve_data(str(tmp_path / "notes.md"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PCLError, match="no images found under"):
        resolve_data(str(tmp_path / "empty"))
    make_image_folder(tmp_path / "cls", per_class=1, classes=2)
    (tmp_path / "cls" / "empty_class").mkdir()
    with pytest.raises(PCLError, match="empty_class hold no images"):
        resolve_data(str(tmp_path / "cls"))


# ---------------------------------------------------------------- --val
def test_val_elsewhere_is_matched_by_class_name(tiny_data: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    shutil.copytree(tiny_data / "test" / "class2", val / "class2")
    shutil.copytree(tiny_data / "test" / "class1", val / "class1")
    src = resolve_data(str(tiny_data / "train"), val=str(val))
    assert src.eval is not None and src.eval.labels == [1] * 4 + [2] * 4
    assert src.eval.classes == src.train.classes and "class0" in (src.warning or "")
    check_knn_data(src, knn_asked=True, val_given=True)


def test_unlabeled_val_when_knn_is_asked_is_an_error(tiny_data: Path, tmp_path: Path) -> None:
    flat = flatten(tiny_data / "test", tmp_path / "flatval")
    src = resolve_data(str(tiny_data / "train"), val=str(flat))
    assert src.knn_off_reason() is not None
    with pytest.raises(PCLError, match=r"--val is given for the kNN monitor, but the eval set .* has no labels"):
        check_knn_data(src, knn_asked=True, val_given=True)
    check_knn_data(src, knn_asked=False, val_given=True)  # --knn-freq 0: fine


# ---------------------------------------------------------------- identity
def test_identity_follows_files_and_labels_not_location(tiny_data: Path, tmp_path: Path) -> None:
    a = resolve_data(str(tiny_data)).identity()
    copy = Path(shutil.copytree(tiny_data, tmp_path / "moved"))
    assert resolve_data(str(copy)).identity() == a and a["count"] == 48
    (copy / "train" / "class0" / "0000.jpg").rename(copy / "train" / "class0" / "zzzz.jpg")
    b = resolve_data(str(copy)).identity()
    assert b["count"] == 48 and b["sha256"] != a["sha256"]
    assert resolve_data(str(copy), labels="none").identity()["sha256"] != b["sha256"]


# ---------------------------------------------------------------- decoding
def _gradient16(path: Path) -> np.ndarray:
    """A 16-bit greyscale PNG: a horizontal ramp over the full 0..65535 range."""
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)[None].repeat(8, 0)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    return ramp


def test_16bit_png_keeps_its_contrast(tmp_path: Path) -> None:
    ramp = _gradient16(tmp_path / "g16.png")
    rgb = np.asarray(load_rgb(str(tmp_path / "g16.png")))
    assert rgb.shape == (8, 64, 3) and rgb.dtype == np.uint8
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert (rgb == expected[..., None]).all()  # 0 -> 0, 65535 -> 255, linear between
    assert rgb.min() == 0 and rgb.max() == 255 and abs(rgb.mean() - 127.5) < 1
    cached = ImageCache([str(tmp_path / "g16.png")], workers=1, show=False)
    assert (cached.array(0) == rgb).all()


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2, :, :] = (200, 10, 10, 255)  # opaque red top half, transparent black bottom half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb(str(tmp_path / "a.png")))
    assert (out[:2] == (200, 10, 10)).all() and (out[2:] == 255).all()
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    pal.paste(1, (0, 0, 4, 2))
    pal.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(load_rgb(str(tmp_path / "p.png")))
    assert (out[:2] == (0, 128, 0)).all() and (out[2:] == 255).all()


def test_8bit_images_decode_as_pil_does(tiny_data: Path, tmp_path: Path) -> None:
    p = str(next((tiny_data / "train" / "class0").glob("*.jpg")))
    assert (np.asarray(load_rgb(p)) == np.asarray(Image.open(p).convert("RGB"))).all()
    grey = str(tmp_path / "grey.png")
    Image.open(p).convert("L").save(grey)
    assert (np.asarray(load_rgb(grey)) == np.asarray(Image.open(grey).convert("RGB"))).all()


# ---------------------------------------------------------------- every image once (issue 27, defects 3 and 9)
def test_a_second_link_to_a_class_folder_is_an_error_naming_it(tiny_data: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(tiny_data / "train", tmp_path / "train"))
    (data / "class0copy").symlink_to("class0", target_is_directory=True)
    with pytest.raises(PCLError, match=r"directory symlink .*class0copy leads back to .*class0 "):
        resolve_data(str(data))


def test_a_file_symlink_beside_its_target_is_an_error(tiny_data: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(tiny_data / "train", tmp_path / "train"))
    (data / "class1" / "dup.jpg").symlink_to(data / "class0" / "0003.jpg")
    with pytest.raises(PCLError, match=r"class1/dup.jpg and .*class0/0003.jpg are the same image"):
        resolve_data(str(data))
    (data / "class1" / "dup.jpg").unlink()
    (data / "class1" / "own.jpg").symlink_to(tmp_path / "elsewhere.jpg")  # a link to an image nowhere else: fine
    shutil.copy(data / "class0" / "0003.jpg", tmp_path / "elsewhere.jpg")
    assert len(resolve_data(str(data)).train) == 49


def test_a_list_naming_a_file_twice_is_an_error(tiny_data: Path, tmp_path: Path) -> None:
    files = sorted(str(p) for p in (tiny_data / "train").rglob("*.jpg"))[:4]
    lst = tmp_path / "l.txt"
    lst.write_text("\n".join([*files, files[1], files[2]]) + "\n")
    with pytest.raises(PCLError, match=r"names 2 file\(s\) more than once, e.g. .*0001.jpg on lines 2 and 5"):
        resolve_data(str(lst))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "alias.jpg").symlink_to(files[0])  # the same file by another path
    lst.write_text(f"{files[0]}\nsub/alias.jpg\n")
    with pytest.raises(PCLError, match="more than once"):
        resolve_data(str(lst))


def test_a_csv_giving_one_file_two_labels_is_an_error(tiny_data: Path, tmp_path: Path) -> None:
    a, b = sorted(str(p) for p in (tiny_data / "train").rglob("*.jpg"))[:2]
    lst = tmp_path / "l.csv"
    lst.write_text(f"path,label\n{a},cat\n{b},dog\n{a},dog\n")
    with pytest.raises(PCLError, match=r"gives .*0000.jpg two labels: 'cat' on line 2 and 'dog' on line 4"):
        resolve_data(str(lst))


def test_a_named_pipe_named_like_an_image_is_skipped_with_one_warning(tiny_data: Path, tmp_path: Path) -> None:
    import os

    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    os.mkfifo(data / "train" / "class1" / "pipe.jpg")
    source = resolve_data(str(data))
    assert len(source.train) == 48 and not any(p.endswith("pipe.jpg") for p in source.train.paths)
    assert source.warning.splitlines() == [
        f"warning: 1 entry named like an image but not a regular file was skipped under {data / 'train'} "
        f"(e.g. {data / 'train' / 'class1' / 'pipe.jpg'} (a named pipe))"
    ]
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(data / "train" / "class0" / "0000.jpg", flat / "a.jpg")
    os.mkfifo(flat / "b.jpg")
    assert resolve_data(str(flat)).train.paths == [str(flat / "a.jpg")]
    lst = tmp_path / "p.txt"
    lst.write_text(f"{flat / 'b.jpg'}\n")
    with pytest.raises(PCLError, match=r"line 1 names .*b\.jpg, which is a named pipe, not an image file"):
        resolve_data(str(lst))


def test_one_class_says_what_it_turns_off(tiny_data: Path, tmp_path: Path) -> None:
    a, b = sorted(str(p) for p in (tiny_data / "train" / "class0").glob("*.jpg"))[:2]
    lst = tmp_path / "one.csv"
    lst.write_text(f"{a},cat\n{b},cat\n")
    source = resolve_data(str(lst))
    assert source.train.describe() == f"2 images in 1 class (list {lst}; with 1 class, cluster metrics and kNN are off)"
    assert source.knn_off_reason() == "the training data has 1 class"
    assert "1 classes" not in source.describe()
