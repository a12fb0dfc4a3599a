"""Evaluate a checkpoint on DATASET.list_val, as the original eval.py did (old-style client)."""
import argparse
import os
import time

import torch

from client_common import (color, inference_module, multi_scale_predict, save_side_by_side,
                           weights_paths)
from mit_semseg.config import cfg
from mit_semseg.dataset import ValDataset
from mit_semseg.lib.nn import user_scattered_collate
from mit_semseg.lib.utils import as_numpy
from mit_semseg.utils import AverageMeter, accuracy, intersectionAndUnion, setup_logger


def run(gpu):
    torch.cuda.set_device(gpu)
    module = inference_module(cfg)
    dataset = ValDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_val, cfg.DATASET)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.VAL.batch_size, shuffle=False,
                                         collate_fn=user_scattered_collate, num_workers=2,
                                         drop_last=True)
    acc_meter, inter_meter, union_meter, time_meter = (AverageMeter() for _ in range(4))
    for batch in loader:
        batch = batch[0]
        label = as_numpy(batch['seg_label'][0])
        torch.cuda.synchronize()
        start = time.perf_counter()
        pred = multi_scale_predict(module, batch, cfg.DATASET.num_class, label.shape[:2], gpu)
        torch.cuda.synchronize()
        time_meter.update(time.perf_counter() - start)
        acc, pix = accuracy(pred, label)
        inter, union = intersectionAndUnion(pred, label, cfg.DATASET.num_class)
        acc_meter.update(acc, pix)
        inter_meter.update(inter)
        union_meter.update(union)
        if cfg.VAL.visualize:
            save_side_by_side((batch['img_ori'], color(label), color(pred)),
                              os.path.join(cfg.DIR, 'result'), batch['info'])
    iou = inter_meter.sum / (union_meter.sum + 1e-10)
    for k, value in enumerate(iou):
        print('class [{}], IoU: {:.4f}'.format(k, value))
    print('[Eval Summary]:')
    print('Mean IoU: {:.4f}, Accuracy: {:.2f}%, Inference Time: {:.4f}s'.format(
        iou.mean(), acc_meter.average() * 100, time_meter.average()))
    print('Evaluation Done!')


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg', required=True)
    parser.add_argument('--gpu', default=0)
    parser.add_argument('opts', default=None, nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cfg.merge_from_file(args.cfg)
    cfg.merge_from_list(args.opts)
    setup_logger(distributed_rank=0).info('config file %s', args.cfg)
    weights_paths(cfg, cfg.VAL.checkpoint)
    run(args.gpu)
