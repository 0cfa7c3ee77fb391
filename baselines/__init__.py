"""Re-implemented baselines. Importing this package registers them in ``psbench.method.METHODS``."""

from baselines import meanpool  # noqa: F401
