"""Data stage: the views of a training batch, as a list of crop groups (global crops first, then local ones).

A :class:`ViewSpec` says how many random views each image gets, their size, the RandomResizedCrop area range
and their kind: ``global`` views (the query/key views of MoCo and PCL, the crops a method may use for keys or
assignments) and ``local`` views (smaller multi-crop views, queries only). View ``i`` of a batch is the
``i``-th entry of the list the loaders yield; global views come first. The default, two global crops of
``--image-size`` at scale ``(--crop-min, 1)``, is the two-crop batch of MoCo v2 / PCL.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcl.utils.errors import PCLError

GLOBAL, LOCAL = "global", "local"
VIEW_KINDS = (GLOBAL, LOCAL)
MAX_SIZE = 4096  # as --image-size


@dataclass(frozen=True)
class CropGroup:
    """``count`` views of ``size`` x ``size`` px, each a RandomResizedCrop of ``scale`` = (min, max) of the
    image's area, of ``kind`` ``global`` | ``local``, augmented by ``recipe`` (a name registered in
    :mod:`pcl.data.augment`; None: the run's recipe, ``mocov2`` with ``--aug-plus``, ``mocov1`` without)."""

    count: int
    size: int
    scale: tuple[float, float]
    kind: str = GLOBAL
    recipe: str | None = None

    def validate(self, where: str = "crop group") -> None:
        """Raise a one-line ``PCLError`` for a count < 1, a size outside (0, 4096], a scale range outside
        (0, 1] or with min > max, or an unknown kind."""
        if self.kind not in VIEW_KINDS:
            raise PCLError(f"{where}: kind must be one of {', '.join(VIEW_KINDS)}, got {self.kind!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise PCLError(f"{where}: the number of {self.kind} crops must be an integer >= 1, got {self.count!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 < self.size <= MAX_SIZE:
            raise PCLError(f"{where}: the crop size must be an integer in (0, {MAX_SIZE}] px, got {self.size!r}")
        scale = tuple(self.scale)
        if len(scale) != 2 or not all(isinstance(v, int | float) for v in scale):
            raise PCLError(f"{where}: the crop scale range must be two numbers (min, max), got {scale!r}")
        lo, hi = scale
        if not 0 < lo <= hi <= 1:
            raise PCLError(f"{where}: the crop scale range must lie in (0, 1] with min <= max, got ({lo:g}, {hi:g})")


@dataclass(frozen=True)
class ViewSpec:
    """The views of one training image: ``groups`` in order, global groups before local ones.

    The loaders yield ``views: list[Tensor]`` of :attr:`num_views` entries, entry ``i`` of shape
    ``(B, 3, sizes[i], sizes[i])``; the views of one group are consecutive.
    """

    groups: tuple[CropGroup, ...]

    @classmethod
    def two_crops(cls, size: int, crop_min: float) -> ViewSpec:
        """MoCo v2 / PCL's batch: two global crops of ``size`` px at scale ``(crop_min, 1)``."""
        return cls((CropGroup(2, size, (crop_min, 1.0), GLOBAL),))

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for no global crop, a local group before a global one, or a bad group."""
        if not self.groups:
            raise PCLError("view spec: no crop groups; a batch needs at least one global crop")
        for i, group in enumerate(self.groups):
            group.validate(f"view spec, crop group {i} ({group.kind})")
        kinds = [g.kind for g in self.groups]
        if GLOBAL not in kinds:
            raise PCLError("view spec: no global crops; a batch needs at least one global crop (the key view)")
        if kinds != sorted(kinds, key=lambda k: k == LOCAL):
            raise PCLError("view spec: global crop groups must come before local ones")

    @property
    def num_views(self) -> int:
        """Views per image (the length of the batch's list of views)."""
        return sum(g.count for g in self.groups)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kind of every view, in order."""
        return tuple(g.kind for g in self.groups for _ in range(g.count))

    @property
    def sizes(self) -> tuple[int, ...]:
        """The side in px of every view, in order."""
        return tuple(g.size for g in self.groups for _ in range(g.count))

    @property
    def global_indices(self) -> tuple[int, ...]:
        """Indices of the global views in the list of views (``0 .. num_global - 1``)."""
        return tuple(i for i, k in enumerate(self.kinds) if k == GLOBAL)

    @property
    def local_indices(self) -> tuple[int, ...]:
        """Indices of the local views in the list of views (after the global ones)."""
        return tuple(i for i, k in enumerate(self.kinds) if k == LOCAL)

    @property
    def num_global(self) -> int:
        """Number of global views."""
        return len(self.global_indices)

    def group_slices(self) -> list[tuple[CropGroup, slice]]:
        """Each group with the slice of the list of views it fills, in order."""
        out, start = [], 0
        for g in self.groups:
            out.append((g, slice(start, start + g.count)))
            start += g.count
        return out

    def size_slices(self) -> list[tuple[int, slice]]:
        """Runs of consecutive views of one size, as ``(size, slice)``: one encoder forward per run
        (``torch.cat(views[s])``) is one forward per resolution when each size is one run."""
        out: list[tuple[int, slice]] = []
        for g, s in self.group_slices():
            if out and out[-1][0] == g.size:
                out[-1] = (g.size, slice(out[-1][1].start, s.stop))
            else:
                out.append((g.size, s))
        return out
