#!/usr/bin/env bash
# MS-COCO Karpathy splits (recipe: data/coco_karpathy.md): dataset_coco.json + COCO val2014 images
# (all the test split needs); --with-train adds train2014 for the other Karpathy splits.
# --check only checks an existing download.
# Usage: bash data/fetch_coco_karpathy.sh [--with-train] [--check]
source "$(dirname "${BASH_SOURCE[0]}")/fetch_common.sh"
DEST="$DATA_ROOT/coco_karpathy"
KARPATHY_URL=https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip

subsets=(val2014) check_only=0
for arg in "$@"; do
    case $arg in
        --with-train) subsets+=(train2014) ;;
        --check) check_only=1 ;;
        *) echo "unknown argument '$arg' (use --with-train and/or --check)" >&2; exit 2 ;;
    esac
done

# The test split rebuilt from the Hugging Face copy yerevann/coco-karpathy (the authors' source),
# for when Karpathy's archive is unreachable. Needs `pip install datasets`.
karpathy_test_from_hub() {
    "$PYTHON" - "$DEST/dataset_coco.json" <<'PY'
import json, sys
from datasets import load_dataset
rows = load_dataset("yerevann/coco-karpathy", split="test")
images = [{"filepath": r["filepath"], "filename": r["filename"], "cocoid": r["cocoid"], "split": "test",
           "sentences": [{"raw": s} for s in r["sentences"]]} for r in rows]
with open(sys.argv[1], "w", encoding="utf-8") as handle:
    json.dump({"images": images, "dataset": "coco"}, handle)
PY
}

fetch() {
    mkdir -p "$DEST"
    if [[ -s $DEST/dataset_coco.json ]]; then
        echo "have $DEST/dataset_coco.json"
    elif download "$KARPATHY_URL" "$DEST/caption_datasets.zip"; then
        unzip -q -o -j "$DEST/caption_datasets.zip" '*dataset_coco.json' -d "$DEST"
        rm "$DEST/caption_datasets.zip"
    else
        echo "Karpathy's archive is unreachable: writing the test split from yerevann/coco-karpathy instead."
        karpathy_test_from_hub
    fi
    coco_images "${subsets[@]}"
    link_coco "$DEST" "${subsets[@]}"
}

check() {
    local counts
    counts=$("$PYTHON" - "$DEST" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
path = root / "dataset_coco.json"
images = json.loads(path.read_text())["images"] if path.is_file() else []
test = [e for e in images if e["split"] == "test"]
missing = sum(not (root / e.get("filepath", "") / e["filename"]).is_file() for e in test)
print(len(test), missing)
PY
)
    expect "Karpathy test images listed" "${counts% *}" 5000
    expect "Karpathy test images missing" "${counts#* }" 0
    expect "val2014 images" "$(count_files "$DEST/val2014" 'COCO_val2014_*.jpg')" 40504
    finish_checks
}

[[ $check_only == 1 ]] || fetch
check
