"""Re-implemented baselines, one file each; ``psbench.catalog`` names them (importing this package imports none)."""
