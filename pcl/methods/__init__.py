"""Methods stage: self-supervised methods behind one interface (:mod:`pcl.methods.base`), selected by
``--method``. Each module registers its method; importing this package registers them all."""

from pcl.methods import dino, moco, pcl, swav  # noqa: F401 - registers the methods
from pcl.methods.base import METHODS, Method, StepClock, StepOutput, method_class

__all__ = ["METHODS", "Method", "StepClock", "StepOutput", "method_class"]
