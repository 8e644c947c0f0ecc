"""Experiments of the study: compare, search, variants, seeds, robustness, ablation, bad cases, augmentation."""
