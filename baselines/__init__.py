"""Re-implemented baselines. Importing this package registers them in ``psbench.method.METHODS``."""

from baselines import meanpool, tokenshift, videoproxy, xpool  # noqa: F401
