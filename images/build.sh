#!/usr/bin/env bash
# Build runtime images: images/build.sh RUNTIME [RUNTIME...]
#   RUNTIME = a folder under images/ holding a Dockerfile (torch-cpu, torch-cuda, ...)
#   tags slm-matrix/<runtime>:latest; build context = the repository root.
# Environment (passed as build args only when set, else the Dockerfile defaults apply):
#   BASE_IMAGE            e.g. slm-matrix/base:bookworm (scripts/make_local_base.sh)
#   PIP_EXTRA_INDEX_URL   e.g. "" where download.pytorch.org is unreachable
#                         (set but empty => no extra index; unset => Dockerfile default)
#   IMAGE_PREFIX          tag prefix (default slm-matrix)
#   DOCKER_BUILD_FLAGS    extra flags for docker build (e.g. --no-cache)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
prefix="${IMAGE_PREFIX:-slm-matrix}"

if [[ $# -eq 0 ]]; then
    echo "usage: $0 RUNTIME [RUNTIME...]   (runtimes: $(cd "$root/images" && ls -d */ | tr -d / | while read -r d; do [[ -f $d/Dockerfile && $d != _* ]] && printf '%s ' "$d"; done))" >&2
    exit 2
fi

args=(--build-arg "RUNNER_BASE=$prefix/runner-base:latest")
[[ -n "${BASE_IMAGE:-}" ]] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
# "set but empty" is meaningful (no extra index), so test for set, not for non-empty.
[[ -n "${PIP_EXTRA_INDEX_URL+x}" ]] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")
# shellcheck disable=SC2206
extra=(${DOCKER_BUILD_FLAGS:-})

# the shared base first (images/_base): every runtime image is FROM it
echo "=== building $prefix/runner-base:latest (base: ${BASE_IMAGE:-Dockerfile default})" >&2
docker build "${args[@]}" "${extra[@]}" -f "$root/images/_base/Dockerfile" -t "$prefix/runner-base:latest" "$root"

for rt in "$@"; do
    df="$root/images/$rt/Dockerfile"
    [[ -f "$df" ]] || { echo "build.sh: no Dockerfile for runtime '$rt' ($df)" >&2; exit 2; }
    tag="$prefix/$rt:latest"
    echo "=== building $tag (base: ${BASE_IMAGE:-Dockerfile default})" >&2
    t0=$(date +%s)
    docker build "${args[@]}" "${extra[@]}" -f "$df" -t "$tag" "$root"
    size=$(docker image inspect --format '{{.Size}}' "$tag")
    echo "=== built $tag in $(( $(date +%s) - t0 )) s, $(( size / 1000000 )) MB" >&2
done
