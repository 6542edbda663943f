"""A failed image build names the cause a user can fix, and the fix: the classifier over real pip (and Docker) output
lines, produced on this machine — pip 23.2 against a TLS index whose certificate it does not trust, an index that
refuses connections, one that never answers, and a disk that is full. The same through a real failed build is in
tests/test_faults_heavy.py (marker `faults`)."""

from __future__ import annotations

import pytest

from orchestrator.images import ImageError, build_failure_cause, follow_build

# pip download --index-url https://127.0.0.1:8443/simple filelock, the server's certificate self-signed
TLS = [
    "Looking in indexes: https://127.0.0.1:8443/simple",
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken "
    "by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
    "self-signed certificate (_ssl.c:1006)'))': /simple/filelock/",
    "Could not fetch URL https://127.0.0.1:8443/simple/filelock/: There was a problem confirming the ssl certificate: "
    "HTTPSConnectionPool(host='127.0.0.1', port=8443): Max retries exceeded with url: /simple/filelock/ (Caused by "
    "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
    "certificate (_ssl.c:1006)'))) - skipping",
    "ERROR: Could not find a version that satisfies the requirement filelock (from versions: none)",
    "ERROR: No matching distribution found for filelock",
]
# --index-url http://127.0.0.1:9/simple (nothing listens)
REFUSED = [
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken "
    "by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection object at 0x7f19d84276d0>: Failed to "
    "establish a new connection: [Errno 111] Connection refused')': /simple/filelock/",
    "ERROR: No matching distribution found for filelock",
]
# an index that accepts the connection and never answers (--timeout 3)
SILENT = [
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken "
    "by 'ReadTimeoutError(\"HTTPConnectionPool(host='127.0.0.1', port=8098): Read timed out. (read timeout=3.0)\")': "
    "/simple/filelock/",
    "ERROR: No matching distribution found for filelock",
]
# pip download into a 100 KiB tmpfs
FULL = ["OSError: [Errno 28] No space left on device: '/tmp/pip-unpack-xcltwzpb/filelock-4.3.2-py3-none-any.whl' -> "
        "'/tmp/fz-full/filelock-4.3.2-py3-none-any.whl'"]
RESOLUTION = ["ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/",
              "The command '/bin/sh -c pip install -r requirements.txt' returned a non-zero code: 1"]


def test_tls_interception_names_the_extra_ca_fix():
    cause = build_failure_cause(TLS + RESOLUTION)
    assert cause.startswith("TLS certificate verification failed against the registry: add your proxy's CA "
                            "certificates (SLM_EXTRA_CA_DIR / images/extra-ca, see README)")
    assert "CERTIFICATE_VERIFY_FAILED" in cause  # the log line that shows it


@pytest.mark.parametrize("lines", [REFUSED, SILENT], ids=["refused", "timeout"])
def test_a_registry_that_does_not_answer_names_the_network_fix(lines):
    cause = build_failure_cause(lines + RESOLUTION)
    assert cause.startswith("the package registry did not answer") and "PIP_INDEX_URL" in cause
    assert "--wheels" in cause


def test_a_full_disk_names_the_space_fix():
    cause = build_failure_cause(FULL)
    assert cause.startswith("the disk is full (No space left on device): free space") and "docker system df" in cause
    # the Docker engine's own wording, lower case
    assert build_failure_cause(["failed to register layer: write /usr/lib/x.so: no space left on device"])


def test_a_pinned_package_no_registry_has_names_the_wheels_fix():
    # the index answers but has no such version (e.g. torch's +cpu builds without the PyTorch index): pip's last lines
    cause = build_failure_cause(TLS[-2:])
    assert cause.startswith("a pinned package is in none of the registries the build can reach: give its wheel")


def test_the_root_cause_wins_over_what_it_causes_and_unknown_causes_stay_unnamed():
    assert build_failure_cause(REFUSED + TLS).startswith("TLS certificate")
    assert build_failure_cause(REFUSED).startswith("the package registry did not answer")  # not "no such package"
    assert build_failure_cause(RESOLUTION) is None


def test_the_build_error_carries_the_cause_after_the_last_error():
    stream = [{"stream": line + "\n"} for line in TLS] + [{"error": RESOLUTION[1]}]
    with pytest.raises(ImageError) as e:
        follow_build(iter(stream), "building slm-matrix/torch-cpu:latest", log=lambda line: None)
    first, cause = str(e.value).splitlines()
    assert first.endswith("returned a non-zero code: 1")
    assert cause.startswith("  cause: TLS certificate verification failed against the registry: add your proxy's CA")
