"""Data stage: data sets and transforms, loaders and their resumable sampler, folder scanning, the decoded-image
cache and batched GPU augmentation."""
