"""Pictures of what a run learned: feature map, cluster gallery and retrieval grid (PNGs).

    python tools/visualize.py runs/default --out runs/default/pictures
    python tools/visualize.py runs/default --method umap --out /tmp/pics     # needs umap-learn
    python tools/visualize.py runs/default --granularity 50 --gallery-sort concentration --out /tmp/pics
    python tools/visualize.py --exported backbone.pth --data DATA --pictures map,retrieval --out /tmp/pics
    python tools/visualize.py runs/default --query my_photo.jpg --query other.png --out /tmp/pics

Writes OUT/feature_map.png (t-SNE, or UMAP with umap-learn: --method tsne|umap, of the backbone features;
coloured by class, or on unlabeled data by cluster: the largest ones in the legend, each with its central image),
OUT/cluster_gallery.png (the last E-step's largest or most concentrated prototypes, members nearest first; PCL
runs only), OUT/retrieval.png (queries and their nearest neighbours) and OUT/pictures.json (settings, gallery
rows, neighbours: indices and file paths). A MoCo v2 run has no clusters: map and retrieval only. Epochs are
0-based, as on the training's "epoch N:" lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcl.analysis.embedding import GALLERY_SORTS
from pcl.eval.pictures import COLOUR_BY, PICTURES, PicturesConfig, make_pictures
from pcl.utils.cli import ErrorParser, folder_arg
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged

POSITIVE = ranged(int, gt=0)


def _pictures(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in PICTURES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(PICTURES)}, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The tool's command line."""
    d = PicturesConfig()
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, nargs="?", help="run directory (its checkpoints/last.pth) or a checkpoint file")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs and pictures.json")
    p.add_argument("--data", default=None, help="image folder (default: the run's own data)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="PCL checkpoint (default: RUN/checkpoints/last.pth)")
    src.add_argument("--exported", type=Path, help="backbone of tools/export_backbone.py for map and retrieval")
    p.add_argument("-a", "--arch", default=None, help="for --exported (default: the run's)")
    p.add_argument("--stem", default=None, choices=("imagenet", "small"), help="for --exported (default: the run's)")
    p.add_argument("--image-size", type=POSITIVE, default=None, help="for --exported (default: the run's)")
    p.add_argument(
        "--pictures", type=_pictures, default=(), help=f"comma list of {', '.join(PICTURES)} (default: all possible)"
    )
    p.add_argument("--granularity", type=POSITIVE, default=None, help="k of the clusters (default: the finest)")
    p.add_argument("--color-by", dest="colour_by", default=d.colour_by, choices=COLOUR_BY, help="feature map colours")
    p.add_argument("--max-points", type=POSITIVE, default=d.max_points, help="feature-map subsample (seeded)")
    p.add_argument(
        "--method",
        "--map-method",
        dest="map_method",
        default=d.map_method,
        choices=("auto", "tsne", "umap"),
        help="feature-map projection (auto: UMAP when umap-learn is installed, else t-SNE)",
    )
    p.add_argument("--clusters", type=POSITIVE, default=d.clusters, help="gallery rows")
    p.add_argument("--members", type=POSITIVE, default=d.members, help="images per gallery row")
    p.add_argument("--gallery-sort", default=d.gallery_sort, choices=GALLERY_SORTS)
    p.add_argument("--queries", type=POSITIVE, default=d.queries, help="seeded random query images")
    p.add_argument("--query", dest="query_paths", type=Path, action="append", default=[], help="query image file")
    p.add_argument("--top", type=POSITIVE, default=d.top, help="neighbours per query")
    p.add_argument("--seed", type=ranged(int, ge=0, le=2**31 - 1), default=d.seed)
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=POSITIVE, default=d.batch_size)
    p.add_argument("-j", "--workers", type=ranged(int, ge=0), default=d.workers)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, draw, print the written files; ``error:`` line and exit 2 on bad input."""
    try:
        a = build_parser().parse_args(argv)
        folder_arg(a.out, "--out")
        if a.exported is None and any(v is not None for v in (a.arch, a.stem, a.image_size)):
            raise PCLError("--arch / --stem / --image-size apply to --exported only")
        info = make_pictures(PicturesConfig(**vars(a)))
    except (PCLError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in info["notes"]:
        print(note)
    for path in info["written"]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
