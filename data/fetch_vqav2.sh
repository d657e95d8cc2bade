#!/usr/bin/env bash
# VQAv2 (recipe: data/vqav2.md): val questions + annotations + COCO val2014 images; --with-train adds
# the train split (for masked fine-tuning). --check only checks an existing download.
# Usage: bash data/fetch_vqav2.sh [--with-train] [--check]
source "$(dirname "${BASH_SOURCE[0]}")/fetch_common.sh"
DEST="$DATA_ROOT/vqav2"
VQA_URL=https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa

splits=(val) check_only=0
for arg in "$@"; do
    case $arg in
        --with-train) splits+=(train) ;;
        --check) check_only=1 ;;
        *) echo "unknown argument '$arg' (use --with-train and/or --check)" >&2; exit 2 ;;
    esac
done

fetch() {
    local split zip
    for split in "${splits[@]}"; do
        # v2_Questions_Val_mscoco.zip holds v2_OpenEnded_mscoco_val2014_questions.json,
        # v2_Annotations_Val_mscoco.zip holds v2_mscoco_val2014_annotations.json
        for pair in "Questions:v2_OpenEnded_mscoco_${split}2014_questions.json" "Annotations:v2_mscoco_${split}2014_annotations.json"; do
            if [[ -s $DEST/${pair#*:} ]]; then echo "have $DEST/${pair#*:}"; continue; fi
            zip="$DEST/v2_${pair%%:*}_${split^}_mscoco.zip"
            download "$VQA_URL/${zip##*/}" "$zip"
            unzip -q -o "$zip" "${pair#*:}" -d "$DEST"
            rm "$zip"
        done
        coco_images "${split}2014"
        link_coco "$DEST" "${split}2014"
    done
}

check() {
    declare -A questions=([val]=214354 [train]=443757) images=([val]=40504 [train]=82783)
    local split
    for split in "${splits[@]}"; do
        expect "$split questions" "$(json_count "$DEST/v2_OpenEnded_mscoco_${split}2014_questions.json" questions)" "${questions[$split]}"
        expect "$split annotations" "$(json_count "$DEST/v2_mscoco_${split}2014_annotations.json" annotations)" "${questions[$split]}"
        expect "${split}2014 images" "$(count_files "$DEST/${split}2014" "COCO_${split}2014_*.jpg")" "${images[$split]}"
    done
    finish_checks
}

[[ $check_only == 1 ]] || fetch
check
