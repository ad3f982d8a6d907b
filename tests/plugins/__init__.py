"""Test-only plug-ins: a method with an extra loss term (``toy_method``), registered the way a new file in
``pcl/methods/`` would register itself, so that tests show what adding one takes."""
