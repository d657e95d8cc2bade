#!/usr/bin/env bash
# LLaVA-Instruct-150K (recipe: data/llava_instruct.md): llava_instruct_150k.json + COCO train2017 images.
# The paper's fine-tuning mix also needs VQAv2 train: bash data/fetch_vqav2.sh --with-train.
# --check only checks an existing download.
# Usage: bash data/fetch_llava_instruct.sh [--check]
source "$(dirname "${BASH_SOURCE[0]}")/fetch_common.sh"
DEST="$DATA_ROOT/llava_instruct"
JSON_URL=https://huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K/resolve/main/llava_instruct_150k.json

check_only=$(check_flag "$@")

fetch() {
    download "$JSON_URL" "$DEST/llava_instruct_150k.json"
    coco_images train2017
    link_coco "$DEST" train2017
}

check() {
    local counts
    counts=$("$PYTHON" - "$DEST" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
path = root / "llava_instruct_150k.json"
entries = json.loads(path.read_text()) if path.is_file() else []
missing = sum(not (root / "train2017" / e["image"]).is_file() for e in entries)
print(len(entries), missing)
PY
)
    expect "conversations" "${counts% *}" 157712
    expect "images missing" "${counts#* }" 0
    expect "train2017 images" "$(count_files "$DEST/train2017" '*.jpg')" 118287
    finish_checks
}

[[ $check_only == 1 ]] || fetch
check
