"""The host side of the matrix: plan the trials, build the images, launch one container (or process) per trial,
collect the records. It knows Docker and the plan, nothing about a runtime's API (that lives in runners/)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
