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
_C.DATASET = CN()
# Root folder that the odgt paths (fpath_img, fpath_segm) are relative to.
_C.DATASET.root_dataset = "./data/"
# odgt list of training samples (one JSON object per line).
_C.DATASET.list_train = "./data/training.odgt"
# odgt list of validation samples.
_C.DATASET.list_val = "./data/validation.odgt"
# Number of classes, unlabeled excluded (annotation values 1..num_class).
_C.DATASET.num_class = 150
# Short-side sizes: one is drawn per training batch; val/test use all of them
# (multi-scale inference). An int or a tuple.
_C.DATASET.imgSizes = (300, 375, 450, 525, 600)
# Upper bound of the long side after rescaling.
_C.DATASET.imgMaxSize = 1000
# Image sides are padded up to a multiple of this (the network's stride).
_C.DATASET.padding_constant = 8
# Training labels are downsampled by this factor (the decoder's output stride).
_C.DATASET.segm_downsampling_rate = 8
# Randomly flip training images horizontally.
_C.DATASET.random_flip = True

# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
_C.MODEL = CN()
# Encoder architecture (see mit_semseg.models.ENCODERS).
_C.MODEL.arch_encoder = "resnet50dilated"
# Decoder architecture (see mit_semseg.models.DECODERS).
_C.MODEL.arch_decoder = "ppm_deepsup"
# Encoder weights file; empty means ImageNet-pretrained (or random, see
# MODEL.pretrained).
_C.MODEL.weights_encoder = ""
# Decoder weights file; empty means freshly initialised.
_C.MODEL.weights_decoder = ""
# Channels of the encoder's last feature map, as seen by the decoder.
_C.MODEL.fc_dim = 2048
# new: start an encoder without weights file from ImageNet weights (True) or
# from random init (False; for offline use and tests).
_C.MODEL.pretrained = True
# new: cache folder for downloaded ImageNet weights.
_C.MODEL.pretrained_dir = "./pretrained"
# new: when loading MODEL.weights_decoder, skip the class layers (the layers
# whose output has num_class channels) so a checkpoint made for another class
# count can be fine-tuned. Every other key is still loaded strictly.
_C.MODEL.reinit_classifier = False
# new: momentum of every BatchNorm's running statistics. A negative value
# keeps each layer's original momentum (0.001; 0.1 inside HRNet), with which
# the released models were trained.
_C.MODEL.bn_momentum = -1.0

# -----------------------------------------------------------------------------
# Training
# -----------------------------------------------------------------------------
_C.TRAIN = CN()
# Images per device (per process under torchrun) in one iteration.
_C.TRAIN.batch_size_per_gpu = 2
# Epochs to train for.
_C.TRAIN.num_epoch = 20
# Epoch to start from; N > 0 resumes from the epoch-N checkpoints in DIR.
_C.TRAIN.start_epoch = 0
# Iterations per epoch, whatever the batch size.
_C.TRAIN.epoch_iters = 5000
# Optimizer; only "SGD" (as the original).
_C.TRAIN.optim = "SGD"
# Base learning rate of the encoder.
_C.TRAIN.lr_encoder = 0.02
# Base learning rate of the decoder.
_C.TRAIN.lr_decoder = 0.02
# Power of the poly schedule: lr * (1 - iter / max_iters) ** lr_pow.
_C.TRAIN.lr_pow = 0.9
# SGD momentum.
_C.TRAIN.beta1 = 0.9
# Weight decay of conv/linear weights (biases and BatchNorm are not decayed).
_C.TRAIN.weight_decay = 1e-4
# Weight of the deep-supervision loss (*_deepsup decoders).
_C.TRAIN.deep_sup_scale = 0.4
# Freeze BatchNorm statistics and affine parameters (fine-tuning only).
_C.TRAIN.fix_bn = False
# DataLoader worker processes.
_C.TRAIN.workers = 16
# Log a line every disp_iter iterations.
_C.TRAIN.disp_iter = 20
# Seed of python, numpy and torch generators (and of each loader worker).
_C.TRAIN.seed = 304
# new: label the padded border of training batches -1 (ignored by the loss)
# instead of the original's 0 (the first class).
_C.TRAIN.ignore_padding = False
# new: before each checkpoint, recompute the BatchNorm running statistics over
# this many training batches ("precise BN"); 0 keeps the original behaviour.
_C.TRAIN.precise_bn_iters = 0
# new: also write a resumable checkpoint every K iterations (0 = epoch ends only).
_C.TRAIN.checkpoint_every = 0
# new: "fp32" (default), or "bf16"/"fp16" autocast.
_C.TRAIN.precision = "fp32"
# new: use channels-last memory layout for the model and inputs.
_C.TRAIN.channels_last = False
# new: seconds a torchrun rank waits in a collective (e.g. for a dead or stuck
# rank) before the run fails instead of hanging.
_C.TRAIN.dist_timeout = 1800

# -----------------------------------------------------------------------------
# Validation
# -----------------------------------------------------------------------------
_C.VAL = CN()
# Images per forward pass; only 1 is supported (as the original).
_C.VAL.batch_size = 1
# Write image | ground truth | prediction PNGs to DIR/result/.
_C.VAL.visualize = False
# Checkpoint suffix to evaluate: DIR/encoder_<checkpoint>, DIR/decoder_<checkpoint>.
_C.VAL.checkpoint = "epoch_20.pth"
# new: also average the horizontally flipped prediction.
_C.VAL.flip = False
# new: "fp32" (default), or "bf16"/"fp16" autocast for inference.
_C.VAL.precision = "fp32"

# -----------------------------------------------------------------------------
# Testing
# -----------------------------------------------------------------------------
_C.TEST = CN()
# Images per forward pass; only 1 is supported (as the original).
_C.TEST.batch_size = 1
# Checkpoint suffix to test: DIR/encoder_<checkpoint>, DIR/decoder_<checkpoint>.
_C.TEST.checkpoint = "epoch_20.pth"
# Folder for the visualised predictions.
_C.TEST.result = "./"
# new: also average the horizontally flipped prediction.
_C.TEST.flip = False
# new: "fp32" (default), or "bf16"/"fp16" autocast for inference.
_C.TEST.precision = "fp32"
