"""The hand-made invariant features of trained networks, to probe next to a learned latent.

- :mod:`~weightspace.features.spec`: :class:`FeatureSpec`, which features (names, width,
  computation), the one entry point for the rest of the package.
- :mod:`~weightspace.features.statistics`: per-layer weight statistics (the field's baseline).
- :mod:`~weightspace.features.spectra`: singular values of each weight matrix and of the layer
  products.
- :mod:`~weightspace.features.function`: function features on labelled probe inputs.
- :mod:`~weightspace.features.pca`: PCA of flat weight vectors (:func:`fit_pca`).
"""

from weightspace.features.spec import FeatureSpec

__all__ = ["FeatureSpec"]
