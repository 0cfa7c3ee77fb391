"""psbench: a benchmark and reproducibility harness for CLIP-based text-video retrieval.

The top level holds the vocabulary every layer shares: ``method`` (the contract: ``encode_video``,
``encode_text``, ``similarity``), ``catalog`` (the one table of methods), ``protocol`` (versioned
protocols, run configs and their hash), ``registry``, ``distributed`` and ``progress``. Everything
else lives in a folder named for its role, in this layer order (a module imports only from layers
below its own; ``make lint`` checks it, and that no import cycle exists):

    cli > report > efficiency > runs > catalog > retrieval | train
        > baselines | promptswitch | data > method | protocol > backbone
        > ops | registry | distributed | progress | files

Importing ``psbench`` imports nothing else.
"""

from importlib import metadata

try:
    __version__ = metadata.version("psbench")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"
