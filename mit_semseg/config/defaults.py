"""Every configuration key, its default and what it means.

The first part of each section holds the keys of the original toolkit with
their original defaults (YAML files written for it load unchanged). Keys
marked "new" extend it; their defaults keep the original's behaviour.
"""
from yacs.config import CfgNode as CN

_C = CN()
# Folder for checkpoints, logs, the effective config and evaluation results.
_C.DIR = "ckpt/ade20k-resnet50dilated-ppm_deepsup"

# -----------------------------------------------------------------------------
# Dataset
# -----------------------------------------------------------------------------
_C.DATASET = CN({
    # Root folder that the odgt paths (fpath_img, fpath_segm) are relative to.
    "root_dataset": "./data/",
    # odgt list of training samples (one JSON object per line).
    "list_train": "./data/training.odgt",
    # odgt list of validation samples.
    "list_val": "./data/validation.odgt",
    # Number of classes, unlabeled excluded (annotation values 1..num_class).
    "num_class": 150,
    # Short-side sizes: one is drawn per training batch; val/test use all of them
    # (multi-scale inference). An int or a tuple.
    "imgSizes": (300, 375, 450, 525, 600),
    # Upper bound of the long side after rescaling.
    "imgMaxSize": 1000,
    # Image sides are padded up to a multiple of this (the network's stride).
    "padding_constant": 8,
    # Training labels are downsampled by this factor (the decoder's output stride).
    "segm_downsampling_rate": 8,
    # Randomly flip training images horizontally.
    "random_flip": True,
    # new: how the annotation files store the classes (files are read as they
    # are, never rewritten): "ade20k" = 0 unlabeled, 1..num_class (default);
    # "zero_based" = 0..num_class-1 with DATASET.ignore_label unlabeled (VOC,
    # Cityscapes train ids); "rgb" = colour-coded masks, colours from
    # DATASET.class_table. Palette (P mode) PNGs are read as their indices in the
    # index formats. See docs/custom-dataset.md.
    "label_format": "ade20k",
    # new: the unlabeled value of "zero_based" annotations (255 in VOC and
    # Cityscapes); a negative value means there is none.
    "ignore_label": 255,
    # new: class table CSV (Idx,Name,R,G,B; see mit_semseg/data/classes.py) giving the
    # names and colours shown by eval, test.py and Segmenter, and the mask colours
    # of "rgb" annotations. A relative path is looked up in the current folder,
    # then in DATASET.root_dataset (not found: an error where masks are read, a
    # warning and the defaults where results are shown). Empty: ADE20K's table
    # for 150 classes, else class_k names and generated colours.
    "class_table": "",
    # new: colours read as unlabeled in "rgb" masks besides the class table's
    # Idx 0 rows, e.g. [[0, 0, 0]] for a table without an "unlabeled" row.
    "ignore_colors": [],
})

# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
_C.MODEL = CN({
    # Encoder architecture (see mit_semseg.models.ENCODERS).
    "arch_encoder": "resnet50dilated",
    # Decoder architecture (see mit_semseg.models.DECODERS).
    "arch_decoder": "ppm_deepsup",
    # Encoder weights file; empty means ImageNet-pretrained (or random, see
    # MODEL.pretrained).
    "weights_encoder": "",
    # Decoder weights file; empty means freshly initialised.
    "weights_decoder": "",
    # Channels of the encoder's last feature map, as seen by the decoder.
    "fc_dim": 2048,
    # new: start an encoder without weights file from ImageNet weights (True) or
    # from random init (False; for offline use and tests).
    "pretrained": True,
    # new: cache folder for downloaded ImageNet weights.
    "pretrained_dir": "./pretrained",
    # new: more places to fetch weights from (URL prefixes, folders, .zip/.tar
    # archives holding the files under the host's paths), tried after the MIT host,
    # --mirror and MIT_SEMSEG_MIRRORS (docs/models.md).
    "mirrors": [],
    # new: when loading MODEL.weights_decoder, skip the class layers (the layers
    # whose output has num_class channels) so a checkpoint made for another class
    # count can be fine-tuned. Every other key is still loaded strictly.
    "reinit_classifier": False,
    # new: momentum of every BatchNorm's running statistics. A negative value
    # keeps each layer's original momentum (0.001; 0.1 inside HRNet), with which
    # the released models were trained.
    "bn_momentum": -1.0,
})
# new: settings of the encoder family, passed to its factory as EncoderSpec.options
# (any keys; the original's families take none). E.g. drop_path_rate (stochastic
# depth: the rate of the deepest block, for the timm and transformer families);
# also on the command line: MODEL.encoder_options.drop_path_rate 0.3.
_C.MODEL.encoder_options = CN(new_allowed=True)

# -----------------------------------------------------------------------------
# Training
# -----------------------------------------------------------------------------
_C.TRAIN = CN({
    # Images per device (per process under torchrun) in one iteration.
    "batch_size_per_gpu": 2,
    # Epochs to train for.
    "num_epoch": 20,
    # Epoch to start from; N > 0 resumes from the epoch-N checkpoints in DIR.
    "start_epoch": 0,
    # Iterations per epoch, whatever the batch size.
    "epoch_iters": 5000,
    # Optimizer; only "SGD" (as the original).
    "optim": "SGD",
    # Base learning rate of the encoder.
    "lr_encoder": 0.02,
    # Base learning rate of the decoder.
    "lr_decoder": 0.02,
    # Power of the poly schedule: lr * (1 - iter / max_iters) ** lr_pow.
    "lr_pow": 0.9,
    # SGD momentum.
    "beta1": 0.9,
    # Weight decay of conv/linear weights (biases and BatchNorm are not decayed).
    "weight_decay": 1e-4,
    # Weight of the deep-supervision loss (*_deepsup decoders).
    "deep_sup_scale": 0.4,
    # Freeze BatchNorm statistics and affine parameters (fine-tuning only).
    "fix_bn": False,
    # DataLoader worker processes.
    "workers": 16,
    # Log a line every disp_iter iterations.
    "disp_iter": 20,
    # Seed of python, numpy and torch generators (and of each loader worker).
    "seed": 304,
    # new: label the padded border of training batches -1 (ignored by the loss)
    # instead of the original's 0 (the first class).
    "ignore_padding": False,
    # new: before each checkpoint, recompute the BatchNorm running statistics over
    # this many training batches ("precise BN"); 0 keeps the original behaviour.
    "precise_bn_iters": 0,
    # new: also write a resumable checkpoint every K iterations (0 = epoch ends only).
    "checkpoint_every": 0,
    # new: format of the epoch-N weight files: "pth" (torch.save, the original's
    # encoder/decoder_epoch_N.pth) or "safetensors" (encoder/decoder_epoch_N.safetensors,
    # needs the safetensors package). State and history files stay .pth; a
    # .pth checkpoint name finds the .safetensors file too (docs/models.md).
    "save_format": "pth",
    # new: "fp32" (default), or "bf16"/"fp16" autocast.
    "precision": "fp32",
    # new: False (default) trains with the fast step, which computes the same
    # step up to float rounding: channels-last memory, the PPM/UPerNet heads'
    # convolution of their resized branches done at the branches' size
    # (models/decoders.py pyramid_conv) and fused (else multi-tensor) SGD
    # (mit_semseg/accel/training.py). True: the original's operations (NCHW,
    # resize+concat heads, PyTorch's default SGD). Checkpoints are the same.
    "exact": False,
    # new: which batches each iteration gets. "resumable" (default): streams
    # seeded from (TRAIN.seed, iteration), so a run resumed anywhere equals one
    # that never stopped (docs/training.md). "original": the original
    # train.py's sequence (NumPy seeded by the loader's first index, its walk
    # and reshuffles, one stream per loader worker); with TRAIN.exact True a run
    # on one device equals the original's iteration by iteration.
    "stream": "resumable",
    # new: extra trainer hooks by name (mit_semseg.training.hooks.register_hook),
    # or "package.module:name" to import the module that registers it.
    "hooks": [],
    # new: intra-op CPU threads for training on the CPU (torch.set_num_threads);
    # 0 keeps PyTorch's default (one per core). On small or shared CPUs fewer
    # threads can be faster: OpenMP threads that wait for each other stall.
    "num_threads": 0,
    # new: evaluate on DATASET.list_val every N epochs (and after the last one)
    # while training; logs mIoU/accuracy, appends them to DIR/metrics.jsonl and
    # keeps DIR/{encoder,decoder}_best.pth + best.json for the best mIoU. 0 = off.
    "eval_every": 0,
    # new: short sides for that validation; empty = one scale, the middle entry
    # of DATASET.imgSizes (fast). Set DATASET.imgSizes here for multi-scale.
    "eval_imgSizes": (),
    # new: also write TensorBoard event files to DIR/tensorboard (needs the
    # tensorboard package: pip install tensorboard).
    "tensorboard": False,
    # new: seconds a torchrun rank waits in a collective (e.g. for a dead or stuck
    # rank) before the run fails instead of hanging.
    "dist_timeout": 1800,
    # new: the validation result that picks DIR/*_best.pth: "mean_iou" (default),
    # "pixel_accuracy", "mean_class_accuracy", "frequency_weighted_iou",
    # "mean_f1", "overall_score", or one class's IoU as "iou:NAME" (a class-table
    # name, e.g. iou:car) or "iou:K" (0-based class index). Higher is better.
    "best_metric": "mean_iou",
    # new: stop training after this many validations in a row without a better
    # TRAIN.best_metric (needs TRAIN.eval_every); 0 = never stop early.
    "early_stop": 0,
    # new: loss weight of each class (DATASET.num_class numbers, class order of
    # the class table), e.g. [0.5, 2.0, 1.0]; empty = unweighted (the original).
    "class_weights": [],
    # new: compute the class weights from the training list's class pixel
    # shares when training starts: "median_frequency", "inverse" or
    # "inverse_sqrt" (docs/training.md); "" = none. Not with TRAIN.class_weights.
    "class_weight_rule": "",
})


def _inference_keys() -> dict:
    """Keys that VAL (eval.py, eval_multipro.py) and TEST (test.py) share."""
    return {
        # new: also average the horizontally flipped prediction.
        "flip": False,
        # new: "fp32" (default), or "bf16"/"fp16" autocast for inference.
        "precision": "fp32",
        # new: False (default) runs an inference copy of the model (BatchNorm folded
        # into the convolutions, fused conv+ReLU, channels-last, factorized PPM and
        # UPerNet heads; mit_semseg/accel/): faster, scores equal
        # to float32 rounding, labels differ only where two classes tie to that
        # precision; score fusion in bands of bounded memory. True: the original's
        # exact operations, full-size fusion included (its bits and its memory).
        "exact": False,
        # new: "pytorch" runs encoder + decoder; "onnxruntime" runs the exported
        # graph named by the "onnx" key instead (python -m mit_semseg export;
        # pip install ".[onnx]").
        # Multi-scale, flip, fusion and the sliding window work alike with both.
        "backend": "pytorch",
        # new: path of the .onnx file for backend "onnxruntime" (unused otherwise).
        "onnx": "",
        # new: what decides for backend "onnxruntime": "config" checks the file's
        # metadata (architecture, class count and names, mean/std, and in mode whole
        # imgSizes / imgMaxSize / padding_constant) against this config and refuses
        # a mismatch; "file" runs on the file's own recorded preprocessing and class
        # table (MODEL, DATASET.num_class/class_table and the resize keys unused).
        "onnx_trust": "config",
        # new: "whole" resizes the photo to each DATASET.imgSizes copy (the
        # original's way); "slide" tiles the photo at full (or slide_scale)
        # resolution and averages the scores of overlapping tiles
        # (mmsegmentation's slide mode; memory bounded; see mit_semseg/inference/slide.py).
        "mode": "whole",
        # new: slide mode tile size [height, width] in pixels of the resized photo.
        "crop_size": [512, 512],
        # new: slide mode step between tiles [height, width]; <= crop_size.
        "stride": [341, 341],
        # new: slide mode resize factor applied to the photo before tiling (1.0:
        # full resolution); the scores are resized back to the photo's size.
        "slide_scale": 1.0,
    }


# -----------------------------------------------------------------------------
# Validation
# -----------------------------------------------------------------------------
_C.VAL = CN({
    # Images per forward pass; only 1 is supported (as the original).
    "batch_size": 1,
    # Write image | ground truth | prediction PNGs to DIR/result/.
    "visualize": False,
    # new: images shown in the report page DIR/eval_<checkpoint>.html, worst
    # first by per-image mIoU (image | ground truth | prediction | errors); 0: none.
    "worst_images": 8,
    # new: also compute boundary IoU per class (Cheng et al. 2021; bands 0.02 x
    # the image diagonal wide) in eval.py / eval_multipro.py and their report.
    "boundary_iou": False,
    # Checkpoint suffix to evaluate: DIR/encoder_<checkpoint>, DIR/decoder_<checkpoint>.
    "checkpoint": "epoch_20.pth",
    **_inference_keys(),
    # new: DataLoader worker processes reading validation images, per evaluation
    # process (the original used 5 in eval.py, 2 in eval_multipro.py).
    "workers": 4,
    # new: intra-op CPU threads of eval.py (torch.set_num_threads); 0 = PyTorch's
    # default (one per core). On small shared CPUs 1 can be several times faster.
    "num_threads": 0,
})

# -----------------------------------------------------------------------------
# Testing
# -----------------------------------------------------------------------------
_C.TEST = CN({
    # Images per forward pass; only 1 is supported (as the original).
    "batch_size": 1,
    # Checkpoint suffix to test: DIR/encoder_<checkpoint>, DIR/decoder_<checkpoint>.
    "checkpoint": "epoch_20.pth",
    # Folder for the visualised predictions.
    "result": "./",
    # new: also write <name>_confidence.png beside each result: the probability of
    # each pixel's predicted class as 8-bit grayscale (255 = 1.0).
    "confidence": False,
    # new: also write <name>_probs.npz beside each result: the averaged class
    # probabilities, key "probs", [num_class, H, W] float16 (2 C H W bytes).
    "save_probs": False,
    # new: also write <name>_labels.png beside each result: the label map, one class
    # id per pixel in the dataset's convention (DATASET.label_format zero_based: the
    # 0-based id; otherwise ADE20K's id + 1), 8-bit indexed PNG whose palette is the
    # class table's colours (16-bit grayscale above 255 classes), and
    # <name>_labels.json, the classes present with their pixel shares
    # (mit_semseg.data.labelmap).
    "save_labels": False,
    **_inference_keys(),
    # new: DataLoader worker processes reading test images (the original used 5).
    "workers": 4,
    # new: intra-op CPU threads of test.py (torch.set_num_threads); 0 = PyTorch's
    # default (one per core). On small shared CPUs 1 can be several times faster.
    "num_threads": 0,
})

# Keys of earlier versions of this project (TRAIN.fast, TRAIN.channels_last,
# VAL.fast, TEST.fast) are accepted in YAML files and overrides and ignored
# with a warning (config/__init__.py): the fast paths they switched on are the
# defaults now; VAL.exact / TEST.exact / TRAIN.exact switch them off.
