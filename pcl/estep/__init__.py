"""E-step stage: momentum features streamed to disk shards, k-means per granularity, prototypes and concentrations."""
