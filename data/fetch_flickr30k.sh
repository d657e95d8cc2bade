#!/usr/bin/env bash
# Flickr30k (recipe: data/flickr30k.md) from the Hugging Face dataset nlphuji/flickr30k, the copy the
# authors read: flickr_annotations_30k.csv (captions + Karpathy splits) and flickr30k-images/.
# --check only checks an existing download.
# Usage: bash data/fetch_flickr30k.sh [--check]
source "$(dirname "${BASH_SOURCE[0]}")/fetch_common.sh"
DEST="$DATA_ROOT/flickr30k"
HUB_URL=https://huggingface.co/datasets/nlphuji/flickr30k/resolve/main

check_only=$(check_flag "$@")

fetch() {
    download "$HUB_URL/flickr_annotations_30k.csv" "$DEST/flickr_annotations_30k.csv"
    if [[ -d $DEST/flickr30k-images ]]; then echo "have $DEST/flickr30k-images"; return; fi
    download "$HUB_URL/flickr30k-images.zip" "$DEST/flickr30k-images.zip"
    unzip_folder "$DEST/flickr30k-images.zip" flickr30k-images "$DEST"
    rm "$DEST/flickr30k-images.zip"
}

check() {
    local counts
    counts=$("$PYTHON" - "$DEST" <<'PY'
import collections, csv, pathlib, sys
root = pathlib.Path(sys.argv[1])
path = root / "flickr_annotations_30k.csv"
rows = list(csv.DictReader(path.open(encoding="utf-8", newline=""))) if path.is_file() else []
splits = collections.Counter(row["split"] for row in rows)
missing = sum(not (root / "flickr30k-images" / row["filename"]).is_file() for row in rows)
print(len(rows), splits["train"], splits["val"], splits["test"], missing)
PY
)
    read -r rows train val test missing <<<"$counts"
    expect "caption rows (images)" "$rows" 31014
    expect "Karpathy train / val / test" "$train / $val / $test" "29000 / 1014 / 1000"
    expect "images missing" "$missing" 0
    finish_checks
}

[[ $check_only == 1 ]] || fetch
check
