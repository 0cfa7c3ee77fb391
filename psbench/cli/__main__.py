"""``python -m psbench.cli`` / ``torchrun -m psbench.cli``: the same app as the ``psbench`` script."""

from psbench.cli import main

main()
