#!/usr/bin/env bash
# Fetch the ADE20K scene-parsing benchmark (ADEChallengeData2016: 20,210
# training and 2,000 validation images with 150-class annotations, a 923 MB
# zip) and unpack it into ./data/ of this repository, where the
# config/ade20k-*.yaml presets and the odgt lists (data/training.odgt,
# data/validation.odgt: paths ADEChallengeData2016/images/...) expect it.
#
# usage: bash download_ADE20K.sh        (re-running it resumes or skips the download)
set -euo pipefail

URL="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
cd "$(dirname "$0")"
data_dir="data"
dataset="$data_dir/ADEChallengeData2016"
zip="$data_dir/ADEChallengeData2016.zip"

count() { find "$1" -maxdepth 1 -type f 2>/dev/null | wc -l; }

complete() {
    [ "$(count "$dataset/images/training")" -ge 20210 ] &&
    [ "$(count "$dataset/annotations/training")" -ge 20210 ] &&
    [ "$(count "$dataset/images/validation")" -ge 2000 ] &&
    [ "$(count "$dataset/annotations/validation")" -ge 2000 ]
}

if complete; then
    echo "ADE20K is already in $dataset; nothing to do."
    exit 0
fi
mkdir -p "$data_dir"

if [ ! -f "$zip" ]; then
    echo "Downloading $URL (923 MB) ..."
    # .part: an interrupted download is continued, never mistaken for a whole zip
    if command -v wget >/dev/null 2>&1; then
        wget -c -O "$zip.part" "$URL"
    elif command -v curl >/dev/null 2>&1; then
        curl -fL -C - -o "$zip.part" "$URL"
    else
        echo "error: neither wget nor curl is installed; download $URL into $zip by hand" >&2
        exit 1
    fi
    mv "$zip.part" "$zip"
fi

echo "Unpacking $zip into $data_dir/ ..."
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$zip" -d "$data_dir"
else
    python3 -m zipfile -e "$zip" "$data_dir"
fi

if ! complete; then
    echo "error: $dataset is incomplete after unpacking (corrupt download?)." >&2
    echo "Delete $zip and run this script again." >&2
    exit 1
fi
rm -f "$zip"
echo "ADE20K is ready in $dataset (lists: $data_dir/training.odgt, $data_dir/validation.odgt)."
echo "Train with e.g.: python train.py --gpus 0-3 --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml"
