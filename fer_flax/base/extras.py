"""How to install an optional extra of fer_flax, worded once for every message that needs one.

fer_flax is installed from its source tree (`pip install -e .`), not from a package index, so
`pip install "fer_flax[webcam]"` finds nothing to install; what works is `pip install -e ".[webcam]"`
in the repository's folder.
"""

from __future__ import annotations


def install_extra(extra: str) -> str:
    """The command that installs the optional dependencies `extra` of pyproject.toml, and where."""
    return f'pip install -e ".[{extra}]" in the fer_flax repository'
