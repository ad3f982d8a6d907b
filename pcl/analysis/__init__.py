"""Analysis stage: measures and pictures of a representation (kNN accuracy, agreement of clusters with labels,
2-D maps, cluster galleries, retrieval grids), shared by the training loop's monitors and the evaluation tools."""
