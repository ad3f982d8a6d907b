"""Model stage: ResNet backbones, projection heads, and the PCL builder (query/key encoders, queue, momentum update)."""
