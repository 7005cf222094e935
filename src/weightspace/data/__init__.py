"""Zoos as training data for the autoencoder.

- :mod:`.normalizer`: :class:`LayerNormalizer`, per-tensor standardization fitted on the
  training split (running moments read in chunks).
- :mod:`.dataset`: :class:`WeightDataset` (checkpoints as flat vectors or neuron tokens, read
  lazily, with targets), :func:`collate_batch`, the target names.
- :mod:`.datamodule`: :func:`split_members` (splits by member), :class:`EpochShuffleSampler`,
  :func:`make_loader` and the Lightning :class:`WeightDataModule`.
- :mod:`.mixed`: :class:`MixedDataModule`, zoos of several architectures in batches of one each.
- :mod:`.interop`: conversions to and from nfn's and plain PyTorch layouts.

The flat and token layouts themselves are in :mod:`weightspace.nets.layout`.
"""
