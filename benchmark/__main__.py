"""``python -m benchmark`` (and the ``surf-benchmark`` script): see :mod:`benchmark.cli`.

The command line's modules import torch (seconds): a Ctrl-C then ends in one line and exit
code 130, as it does later in :func:`benchmark.cli.main`, rather than a traceback.
"""

import sys


def run() -> int:
    """Import :mod:`benchmark.cli` and run :func:`benchmark.cli.main`; its exit code."""
    try:
        from benchmark.cli import main
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C) while starting; nothing was run", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
