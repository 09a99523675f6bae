"""sgem: reproduction package for "High-Precision and Fast Inference for Infrared Small
Target Detection through Semantic Gap Reduction" (Deng & Yang)."""

__version__ = "0.1.0"
