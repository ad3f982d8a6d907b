"""Model stage: backbones (torchvision ResNets, timm models), projection heads, encoders, momentum copies."""

from pcl.model import timm_backbone  # noqa: F401  (registers the timm family after torchvision's)
