"""The weight autoencoder (DESIGN.md, step 5).

- :mod:`~weightspace.autoencoder.module`: :class:`WeightAutoencoder`, the LightningModule.
- :mod:`~weightspace.autoencoder.supervised`: ``WeightPredictor``, the same encoders trained
  on one target (the supervised ceiling, ``experiment=autoencoder/supervised``).
- :mod:`~weightspace.autoencoder.reader`: what both share: the encoder built from its
  config, what it reads (flat weights, outputs on probe inputs, the networks' parameters), the
  optimizer.
- :mod:`~weightspace.autoencoder.encoders` / :mod:`~weightspace.autoencoder.decoders`: the
  swappable parts (MLP, transformer over neuron tokens, probe outputs), built from
  ``_target_`` configs; :mod:`~weightspace.autoencoder.graph` (a graph metanetwork over
  neurons) and :mod:`~weightspace.autoencoder.nfn` (NP layers): the symmetry-aware encoders;
  :mod:`~weightspace.autoencoder.blocks`: their shared layers.
- :mod:`~weightspace.autoencoder.options`: the model's plain-value options (the feature use,
  the parts' configs) and what they build.
- :mod:`~weightspace.autoencoder.losses`: reconstruction, NT-Xent, functional.
- :mod:`~weightspace.autoencoder.train`: ``train(cfg)`` and the entry point (was ``train_ae``).
- :mod:`~weightspace.autoencoder.run`: load a trained run, encode a zoo (was ``latents``).
- :mod:`~weightspace.autoencoder.legacy`: runs written before the restructure, read as today's.

``from weightspace.autoencoder import WeightAutoencoder``; everything else from its module.
"""

from weightspace.autoencoder.module import WeightAutoencoder

__all__ = ["WeightAutoencoder"]
