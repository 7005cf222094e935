"""The package list for setuptools; everything else about the build is in pyproject.toml.

Every folder of the code under ``src/`` and of the config root ``conf/`` (shipped as
``weightspace.conf``, its YAML files package data), found anew at each build: a folder added
to either is in the next wheel without editing a list.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(
            "src", include=["weightspace", "weightspace.*"], exclude=["*.__pycache__"]
        ),
        "weightspace.conf",
        *(
            f"weightspace.conf.{p}"
            for p in find_namespace_packages("conf", exclude=["*__pycache__*"])
        ),
    ]
)
