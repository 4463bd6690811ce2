"""Hermes: semi-supervised ultrasound lesion classification and segmentation.

``hermes.ops`` (the fused ops) imports nothing beyond torch; the training engine lives in
``hermes.train`` and is imported only when asked for.
"""

__version__ = "0.1.0"
