"""Why an image build failed, in words the user can act on: the known causes in a build log (orchestrator/images.py
follows the build and names the cause with its fix)."""

from __future__ import annotations

import re

EXTRA_CA_ENV = "SLM_EXTRA_CA_DIR"  # a folder of *.crt to trust in the images (a TLS-intercepting proxy's, a corp CA)

# Causes of a failed build that the user can fix, by priority (a TLS failure also makes pip's resolver fail, and its
# "ResolutionImpossible" is what the build ends with): (a line of the build log, the cause, the fix).
BUILD_CAUSES = (
    (re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|SSLCertVerificationError"),
     "TLS certificate verification failed against the registry",
     f"add your proxy's CA certificates ({EXTRA_CA_ENV} / images/extra-ca, see README)"),
    (re.compile(r"no space left on device", re.IGNORECASE),
     "the disk is full (No space left on device)",
     "free space on the Docker engine's disk (`docker system df`, `docker builder prune`), then build again"),
    (re.compile(r"NewConnectionError|Failed to establish a new connection|Connection refused|ReadTimeoutError|"
                r"ConnectTimeoutError|Read timed out|Temporary failure in name resolution|Name or service not known|"
                r"Network is unreachable|Could not resolve"),
     "the package registry did not answer (connection refused, timed out or not resolvable)",
     "check the network and proxy settings (HTTPS_PROXY; PIP_INDEX_URL / PIP_EXTRA_INDEX_URL), or build from local "
     "wheels (--wheels DIR / SLM_WHEEL_DIRS, see README)"),
    (re.compile(r"No matching distribution found for|Could not find a version that satisfies the requirement"),
     "a pinned package is in none of the registries the build can reach",
     "give its wheel (--wheels DIR / SLM_WHEEL_DIRS) or an index that has it (PIP_EXTRA_INDEX_URL), see README"),
)


def build_failure_cause(lines) -> str | None:
    """"cause: fix (the log line that shows it)" of the highest-priority known cause among a failed build's log
    lines; None when none is known."""
    found: dict[int, str] = {}
    for line in lines:
        for i, (pattern, _, _) in enumerate(BUILD_CAUSES):
            if i not in found and pattern.search(line):
                found[i] = line.strip()
    if not found:
        return None
    i = min(found)
    _, cause, fix = BUILD_CAUSES[i]
    return f"{cause}: {fix} (the build log: {found[i][:300]})"
