"""Segment images with a checkpoint, as the original test.py did (old-style client)."""
import argparse
import os

import numpy as np
import torch

from client_common import (color, inference_module, multi_scale_predict, read_names,
                           save_side_by_side, weights_paths)
from mit_semseg.config import cfg
from mit_semseg.dataset import TestDataset
from mit_semseg.lib.nn import user_scattered_collate
from mit_semseg.utils import find_recursive, setup_logger

NAMES = read_names()


def report(pred, info):
    pred = np.int32(pred)
    values, counts = np.unique(pred, return_counts=True)
    print('Predictions in [{}]:'.format(info))
    for k in np.argsort(counts)[::-1]:
        share = 100.0 * counts[k] / pred.size
        if share > 0.1:
            print('  {}: {:.2f}%'.format(NAMES[values[k] + 1], share))


def run(gpu):
    torch.cuda.set_device(gpu)
    module = inference_module(cfg)
    dataset = TestDataset(cfg.list_test, cfg.DATASET)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.TEST.batch_size, shuffle=False,
                                         collate_fn=user_scattered_collate, num_workers=2,
                                         drop_last=True)
    for batch in loader:
        batch = batch[0]
        size = (batch['img_ori'].shape[0], batch['img_ori'].shape[1])
        pred = multi_scale_predict(module, batch, cfg.DATASET.num_class, size, gpu)
        report(pred, batch['info'])
        save_side_by_side((batch['img_ori'], color(pred).astype(np.uint8)), cfg.TEST.result,
                          batch['info'])
    print('Inference done!')


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--imgs', required=True)
    parser.add_argument('--cfg', required=True)
    parser.add_argument('--gpu', default=0, type=int)
    parser.add_argument('opts', default=None, nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cfg.merge_from_file(args.cfg)
    cfg.merge_from_list(args.opts)
    setup_logger(distributed_rank=0).info('config file %s', args.cfg)
    cfg.MODEL.arch_encoder = cfg.MODEL.arch_encoder.lower()
    weights_paths(cfg, cfg.TEST.checkpoint)
    images = find_recursive(args.imgs) if os.path.isdir(args.imgs) else [args.imgs]
    assert images, 'no .jpg images found'
    cfg.list_test = [{'fpath_img': p} for p in sorted(images)]
    run(args.gpu)
