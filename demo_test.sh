#!/bin/bash
# Segment one ADE20K validation photo with the released ResNet50dilated + PPM_deepsup model.
# Downloads the model into ckpt/ and the photo into ./ (skipped when present);
# DOWNLOAD_ONLY=1 stops after the downloads. Without internet access, set
# MIT_SEMSEG_MIRRORS to a mirror URL, folder or archive holding the model (and
# put the photo here yourself); see docs/models.md. A cut download resumes when
# the script is run again, and the model's SHA-256 is checked on every load.
set -e

TEST_IMG=ADE_val_00001519.jpg
MODEL_NAME=ade20k-resnet50dilated-ppm_deepsup
MODEL_PATH=ckpt/$MODEL_NAME
RESULT_PATH=./
IMG_URL=http://sceneparsing.csail.mit.edu/data/ADEChallengeData2016/images/validation/$TEST_IMG

python3 -m mit_semseg pretrained $MODEL_NAME --dest ckpt
if [ ! -e "$TEST_IMG" ]; then
  python3 -m mit_semseg pretrained --url "$IMG_URL" --out "$RESULT_PATH/$TEST_IMG"
fi

if [ -z "$DOWNLOAD_ONLY" ]; then
  python3 -u test.py \
    --imgs "$TEST_IMG" \
    --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml \
    DIR "$MODEL_PATH" \
    TEST.result "$RESULT_PATH" \
    TEST.checkpoint epoch_20.pth
fi
