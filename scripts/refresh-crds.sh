#!/usr/bin/env bash
# Refresh the vendored upstream CRDs in platform/eyeops/kube/crds from their projects' sources.
#   scripts/refresh-crds.sh [KSERVE_REF] [KUBERAY_REF]   (release tags or commits)
# Defaults are the commits the vendored copies come from (see platform/eyeops/kube/crds/README.md);
# after a refresh, update the README's table and run the k8s/kube tests before committing.
set -euo pipefail

KSERVE_REF="${1:-aaac4e294dae2c7b1aa1886447793f3aa1c30912}"
KUBERAY_REF="${2:-feeaf72facab4881ba2b179248bb67315634e229}"
DEST="$(cd "$(dirname "$0")/.." && pwd)/platform/eyeops/kube/crds"
RAW=https://raw.githubusercontent.com

fetch() {  # fetch URL FILE: download to a temporary file first so a failure leaves the copy intact
  local url="$1" out="$DEST/$2" tmp
  tmp="$(mktemp "$DEST/.$2.XXXXXX")"
  if ! curl -fsSL --retry 3 -o "$tmp" "$url"; then
    rm -f "$tmp"
    echo "error: cannot download $url" >&2
    exit 1
  fi
  if ! grep -q '^kind: CustomResourceDefinition' "$tmp"; then
    rm -f "$tmp"
    echo "error: $url is not a CustomResourceDefinition" >&2
    exit 1
  fi
  mv "$tmp" "$out"
  echo "$2 <- $url"
}

for crd in serving.kserve.io_inferenceservices serving.kserve.io_servingruntimes; do
  fetch "$RAW/kserve/kserve/$KSERVE_REF/config/crd/full/$crd.yaml" "$crd.yaml"
done
for crd in ray.io_rayclusters ray.io_rayjobs ray.io_rayservices; do
  fetch "$RAW/ray-project/kuberay/$KUBERAY_REF/ray-operator/config/crd/bases/$crd.yaml" "$crd.yaml"
done
echo "now update the version table in platform/eyeops/kube/crds/README.md (kserve $KSERVE_REF, kuberay $KUBERAY_REF)"
