"""Generate a zoo of trained MLPs: python scripts/generate_zoo.py task=digits zoo.size=2000 ...

A thin Hydra wrapper around :func:`weightspace.generate.generate`; see conf/generate.yaml.
"""

import hydra
from omegaconf import DictConfig

from weightspace.cli import run_or_exit
from weightspace.config import CONF_DIR
from weightspace.generate import generate


@hydra.main(config_path=str(CONF_DIR), config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(run_or_exit(generate, cfg))


if __name__ == "__main__":
    main()
