"""Train a weight-space autoencoder: python scripts/train_autoencoder.py zoo=zoos/digits ...

A thin Hydra entry point around :func:`weightspace.autoencoder.train.train`
(conf/train_autoencoder.yaml); e.g. add ``encoder=transformer canon=align``.
"""

from weightspace.autoencoder.train import cli

if __name__ == "__main__":
    cli()
