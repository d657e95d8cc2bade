# Helpers shared by the data/fetch_*.sh recipes (sourced by them, not run on its own).
# Downloads land in $NARROWGATE_DATA/<dataset>/ or, by default, data/downloads/<dataset>/ of the
# repository: the folders narrowgate_utils.datasets.load_samples reads when data_dir is None.
set -euo pipefail

DATA_ROOT="${NARROWGATE_DATA:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/downloads}"
PYTHON="${PYTHON:-python3}"
CHECK_FAILED=0

# check_flag ARGS...: prints 1 for a lone --check (only check an existing download), 0 for none;
# any other argument is an error.
check_flag() {
    local flag=0 arg
    for arg in "$@"; do
        case $arg in
            --check) flag=1 ;;
            *) echo "unknown argument '$arg' (use --check)" >&2; exit 2 ;;
        esac
    done
    echo "$flag"
}

# download URL FILE: resumable download to FILE (kept as FILE.part until complete); skips a complete FILE.
download() {
    local url=$1 out=$2
    if [[ -s $out ]]; then echo "have $out"; return; fi
    mkdir -p "$(dirname "$out")"
    echo "fetch $url"
    curl -L --fail --retry 3 -C - -o "$out.part" "$url" || return 1
    mv "$out.part" "$out"
}

# unzip_folder ZIP FOLDER DEST: extract FOLDER/ of ZIP as DEST/FOLDER, complete or not at all.
unzip_folder() {
    local zip=$1 folder=$2 dest=$3
    rm -rf "$dest/$folder.unzip"
    unzip -q "$zip" "$folder/*" -d "$dest/$folder.unzip"
    mv "$dest/$folder.unzip/$folder" "$dest/$folder"
    rmdir "$dest/$folder.unzip"
}

# json_count FILE [KEY]: number of entries of the JSON list in FILE (or of FILE[KEY]); 0 if FILE is missing.
json_count() {
    "$PYTHON" - "$@" <<'PY'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
data = json.loads(path.read_text()) if path.is_file() else []
print(len(data[sys.argv[2]]) if path.is_file() and len(sys.argv) > 2 else len(data))
PY
}

# coco_images SUBSET...: COCO image folders (train2014, val2014, train2017), fetched once into
# $DATA_ROOT/coco_images/SUBSET/ and shared by the datasets that read them (see link_coco).
coco_images() {
    local subset dir zip
    for subset in "$@"; do
        dir="$DATA_ROOT/coco_images/$subset"
        if [[ -d $dir ]]; then echo "have $dir"; continue; fi
        zip="$DATA_ROOT/coco_images/$subset.zip"
        download "http://images.cocodataset.org/zips/$subset.zip" "$zip"
        unzip_folder "$zip" "$subset" "$DATA_ROOT/coco_images"   # the archive holds one folder, SUBSET/
        rm "$zip"
    done
}

# link_coco DATASET_DIR SUBSET...: DATASET_DIR/SUBSET -> ../coco_images/SUBSET (relative symlinks).
link_coco() {
    local dest=$1 subset
    shift
    mkdir -p "$dest"
    for subset in "$@"; do ln -sfn "../coco_images/$subset" "$dest/$subset"; done
}

# expect WHAT FOUND EXPECTED: print one check line; a mismatch makes finish_checks fail.
expect() {
    if [[ $2 == "$3" ]]; then
        echo "ok       $1: $2"
    else
        echo "MISMATCH $1: found $2, expected $3"
        CHECK_FAILED=1
    fi
}

# count_files DIR GLOB: number of files named GLOB directly in DIR (DIR may be a symlink).
count_files() {
    if [[ -d $1 ]]; then find "$1/" -maxdepth 1 -type f -name "$2" | wc -l | tr -d ' '; else echo 0; fi
}

finish_checks() {
    if [[ $CHECK_FAILED == 1 ]]; then
        echo "Some checks failed: re-run the fetch script (downloads resume) or see the recipe's Check section." >&2
        exit 1
    fi
    echo "All checks passed."
}
