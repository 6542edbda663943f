#!/usr/bin/env python3
"""The matrix orchestrator: `python orchestrate.py --help`. The logic lives in orchestrator/."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main())
