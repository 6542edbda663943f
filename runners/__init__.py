"""The runner: the code that runs, unchanged, inside every runtime image.

It knows runtimes and meters, nothing about Docker. One job in (runners.job), one record out (runners.record).
"""

__version__ = "0.1.0"
