#!/usr/bin/env bash
# ImageNet-100 of the paper (recipe: data/imagenet.md): extracts only the train folders of the 116
# classes the package uses (100 animal classes + 20 patching classes, 4 shared) from an ILSVRC-2012
# archive you downloaded yourself (ImageNet needs an account and accepted terms, so nothing here
# fetches it). The wnids come from narrowgate_utils/resources/imagenet_wnids.tsv.
# Usage: bash data/fetch_imagenet.sh ILSVRC2012_img_train.tar                   (image-net.org)
#        bash data/fetch_imagenet.sh imagenet-object-localization-challenge.zip  (Kaggle)
#        bash data/fetch_imagenet.sh --check
source "$(dirname "${BASH_SOURCE[0]}")/fetch_common.sh"
DEST="$DATA_ROOT/imagenet"
WNID_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/narrowgate_utils/resources/imagenet_wnids.tsv"
mapfile -t WNIDS < <(awk -F'\t' '!/^#/ && NF { print $2 }' "$WNID_FILE")
MIN_PER_CLASS=${MIN_PER_CLASS:-100}  # images per class the paper draws

# from the official archive: one <wnid>.tar per class inside ILSVRC2012_img_train.tar
fetch_tar() {
    local archive=$1 tmp="$DEST/train.extract" wnid patterns=()
    for wnid in "${WNIDS[@]}"; do patterns+=("*$wnid.tar"); done  # members are <wnid>.tar (or ./<wnid>.tar)
    rm -rf "$tmp"
    mkdir -p "$tmp" "$DEST/train"
    tar -xf "$archive" -C "$tmp" --wildcards "${patterns[@]}"
    for wnid in "${WNIDS[@]}"; do
        rm -rf "$DEST/train/$wnid.part" "$DEST/train/$wnid"
        mkdir -p "$DEST/train/$wnid.part"
        tar -xf "$(find "$tmp" -name "$wnid.tar" -print -quit)" -C "$DEST/train/$wnid.part"
        mv "$DEST/train/$wnid.part" "$DEST/train/$wnid"
    done
    rm -rf "$tmp"
}

# from the Kaggle archive: ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG
fetch_kaggle() {
    local archive=$1 tmp="$DEST/train.extract" wnid patterns=()
    for wnid in "${WNIDS[@]}"; do patterns+=("ILSVRC/Data/CLS-LOC/train/$wnid/*"); done
    rm -rf "$tmp"
    mkdir -p "$DEST/train"
    unzip -q "$archive" "${patterns[@]}" -d "$tmp"
    for wnid in "${WNIDS[@]}"; do
        rm -rf "$DEST/train/$wnid"
        mv "$tmp/ILSVRC/Data/CLS-LOC/train/$wnid" "$DEST/train/$wnid"
    done
    rm -rf "$tmp"
}

check() {
    local wnid n full=0 total=0
    for wnid in "${WNIDS[@]}"; do
        n=$(count_files "$DEST/train/$wnid" '*.JPEG')
        total=$((total + n))
        if ((n >= MIN_PER_CLASS)); then full=$((full + 1)); else echo "class $wnid: $n images"; fi
    done
    expect "class folders with >= $MIN_PER_CLASS images" "$full" "${#WNIDS[@]}"
    echo "info     train images in the ${#WNIDS[@]} class folders: $total (732-1300 per class in ILSVRC-2012)"
    finish_checks
}

case ${1:-} in
    --check) ;;
    *.tar) fetch_tar "$1" ;;
    *.zip) fetch_kaggle "$1" ;;
    *) echo "usage: bash data/fetch_imagenet.sh ILSVRC2012_img_train.tar | imagenet-object-localization-challenge.zip | --check" >&2
       exit 2 ;;
esac
check
