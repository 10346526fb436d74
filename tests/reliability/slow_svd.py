"""Run the svdlora CLI with every decomposition slowed down, so kills land mid-run (tests only)."""

from __future__ import annotations

import sys
import time

from svdlora_cli.cli.app import main
from svdlora_cli.spectra import svd_job

real = svd_job.decompose


def slow(*args, **kwargs):
    time.sleep(0.15)
    return real(*args, **kwargs)


svd_job.decompose = slow

if __name__ == "__main__":
    sys.argv[0] = "svdlora"
    main()
