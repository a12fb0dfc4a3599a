"""Pieces the client programs share, written the way scripts of 2019 did it."""
import csv
import os

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from scipy.io import loadmat

from mit_semseg.lib.nn import async_copy_to
from mit_semseg.lib.utils import as_numpy
from mit_semseg.models import ModelBuilder, SegmentationModule
from mit_semseg.utils import colorEncode

COLORS = loadmat('data/color150.mat')['colors']


def read_names(path='data/object150_info.csv'):
    table = {}
    with open(path) as fh:
        rows = csv.reader(fh)
        next(rows)
        for row in rows:
            table[int(row[0])] = row[5].split(';')[0]
    return table


def weights_paths(cfg, checkpoint):
    cfg.MODEL.weights_encoder = os.path.join(cfg.DIR, 'encoder_' + checkpoint)
    cfg.MODEL.weights_decoder = os.path.join(cfg.DIR, 'decoder_' + checkpoint)
    assert os.path.exists(cfg.MODEL.weights_encoder), 'no encoder checkpoint'
    assert os.path.exists(cfg.MODEL.weights_decoder), 'no decoder checkpoint'


def inference_module(cfg):
    encoder = ModelBuilder.build_encoder(arch=cfg.MODEL.arch_encoder.lower(),
                                         fc_dim=cfg.MODEL.fc_dim,
                                         weights=cfg.MODEL.weights_encoder)
    decoder = ModelBuilder.build_decoder(arch=cfg.MODEL.arch_decoder.lower(),
                                         fc_dim=cfg.MODEL.fc_dim,
                                         num_class=cfg.DATASET.num_class,
                                         weights=cfg.MODEL.weights_decoder,
                                         use_softmax=True)
    module = SegmentationModule(encoder, decoder, nn.NLLLoss(ignore_index=-1))
    module.cuda()
    module.eval()
    return module


def multi_scale_predict(module, batch, num_class, seg_size, gpu):
    """Average the class probabilities of every resized copy, return the argmax map."""
    copies = batch['img_data']
    with torch.no_grad():
        total = async_copy_to(torch.zeros(1, num_class, seg_size[0], seg_size[1]), gpu)
        for img in copies:
            feed = {k: v for k, v in batch.items() if k not in ('img_ori', 'info')}
            feed['img_data'] = img
            feed = async_copy_to(feed, gpu)
            total = total + module(feed, segSize=seg_size) / len(copies)
        pred = torch.max(total, dim=1)[1]
    return as_numpy(pred.squeeze(0).cpu())


def save_side_by_side(parts, folder, info):
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(info).replace('.jpg', '.png')
    Image.fromarray(np.concatenate(parts, axis=1).astype(np.uint8)).save(os.path.join(folder, name))


def color(labels):
    return colorEncode(labels, COLORS)
