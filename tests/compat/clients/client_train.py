"""Train encoder + decoder, as the original train.py did (old-style client).

One difference, as forks running on a single device do: with one GPU the
module is not wrapped in UserScatteredDataParallel, so the list holding one
batch dict is unwrapped before the forward pass.
"""
import argparse
import os
import random
import time

import torch
import torch.nn as nn

from mit_semseg.config import cfg
from mit_semseg.dataset import TrainDataset
from mit_semseg.lib.nn import (UserScatteredDataParallel, patch_replication_callback,
                               user_scattered_collate)
from mit_semseg.models import ModelBuilder, SegmentationModule
from mit_semseg.utils import AverageMeter, parse_devices, setup_logger


def param_groups(module):
    """Weights decay, biases and normalisation parameters do not."""
    decay, no_decay = [], []
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            no_decay += [p for p in (m.weight, m.bias) if p is not None]
    return [dict(params=decay), dict(params=no_decay, weight_decay=0.0)]


def sgd(module, lr):
    return torch.optim.SGD(param_groups(module), lr=lr, momentum=cfg.TRAIN.beta1,
                           weight_decay=cfg.TRAIN.weight_decay)


def poly_lr(optimizers, it):
    scale = (1.0 - float(it) / cfg.TRAIN.max_iters) ** cfg.TRAIN.lr_pow
    cfg.TRAIN.running_lr_encoder = cfg.TRAIN.lr_encoder * scale
    cfg.TRAIN.running_lr_decoder = cfg.TRAIN.lr_decoder * scale
    for group in optimizers[0].param_groups:
        group['lr'] = cfg.TRAIN.running_lr_encoder
    for group in optimizers[1].param_groups:
        group['lr'] = cfg.TRAIN.running_lr_decoder


def one_epoch(module, batches, optimizers, history, epoch, single):
    loss_meter, acc_meter, step_meter = AverageMeter(), AverageMeter(), AverageMeter()
    module.train(not cfg.TRAIN.fix_bn)
    tick = time.time()
    for i in range(cfg.TRAIN.epoch_iters):
        batch = next(batches)
        if single:
            batch = batch[0]
        module.zero_grad()
        poly_lr(optimizers, i + (epoch - 1) * cfg.TRAIN.epoch_iters)
        loss, acc = module(batch)
        loss, acc = loss.mean(), acc.mean()
        loss.backward()
        for opt in optimizers:
            opt.step()
        step_meter.update(time.time() - tick)
        tick = time.time()
        loss_meter.update(loss.data.item())
        acc_meter.update(acc.data.item() * 100)
        if i % cfg.TRAIN.disp_iter == 0:
            print('Epoch: [{}][{}/{}], lr_encoder: {:.6f}, lr_decoder: {:.6f}, '
                  'Accuracy: {:4.2f}, Loss: {:.6f}'.format(
                      epoch, i, cfg.TRAIN.epoch_iters, cfg.TRAIN.running_lr_encoder,
                      cfg.TRAIN.running_lr_decoder, acc_meter.average(), loss_meter.average()))
            history['train']['epoch'].append(epoch - 1 + i / cfg.TRAIN.epoch_iters)
            history['train']['loss'].append(loss.data.item())
            history['train']['acc'].append(acc.data.item())


def save(encoder, decoder, history, epoch):
    print('Saving checkpoints...')
    torch.save(history, os.path.join(cfg.DIR, 'history_epoch_{}.pth'.format(epoch)))
    torch.save(encoder.state_dict(), os.path.join(cfg.DIR, 'encoder_epoch_{}.pth'.format(epoch)))
    torch.save(decoder.state_dict(), os.path.join(cfg.DIR, 'decoder_epoch_{}.pth'.format(epoch)))


def run(gpus):
    encoder = ModelBuilder.build_encoder(arch=cfg.MODEL.arch_encoder.lower(),
                                         fc_dim=cfg.MODEL.fc_dim,
                                         weights=cfg.MODEL.weights_encoder)
    decoder = ModelBuilder.build_decoder(arch=cfg.MODEL.arch_decoder.lower(),
                                         fc_dim=cfg.MODEL.fc_dim,
                                         num_class=cfg.DATASET.num_class,
                                         weights=cfg.MODEL.weights_decoder)
    crit = nn.NLLLoss(ignore_index=-1)
    deep_sup = cfg.TRAIN.deep_sup_scale if cfg.MODEL.arch_decoder.endswith('deepsup') else None
    module = SegmentationModule(encoder, decoder, crit, deep_sup)
    dataset = TrainDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_train, cfg.DATASET,
                           batch_per_gpu=cfg.TRAIN.batch_size_per_gpu)
    loader = torch.utils.data.DataLoader(dataset, batch_size=len(gpus), shuffle=False,
                                         collate_fn=user_scattered_collate,
                                         num_workers=cfg.TRAIN.workers, drop_last=True)
    print('1 Epoch = {} iters'.format(cfg.TRAIN.epoch_iters))
    batches = iter(loader)
    if len(gpus) > 1:
        module = UserScatteredDataParallel(module, device_ids=gpus)
        patch_replication_callback(module)
    module.cuda()
    optimizers = (sgd(encoder, cfg.TRAIN.lr_encoder), sgd(decoder, cfg.TRAIN.lr_decoder))
    history = {'train': {'epoch': [], 'loss': [], 'acc': []}}
    for epoch in range(cfg.TRAIN.start_epoch, cfg.TRAIN.num_epoch):
        one_epoch(module, batches, optimizers, history, epoch + 1, len(gpus) == 1)
        save(encoder, decoder, history, epoch + 1)
    print('Training Done!')


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg', required=True)
    parser.add_argument('--gpus', default='0-3')
    parser.add_argument('opts', default=None, nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cfg.merge_from_file(args.cfg)
    cfg.merge_from_list(args.opts)
    setup_logger(distributed_rank=0).info('config file %s', args.cfg)
    os.makedirs(cfg.DIR, exist_ok=True)
    with open(os.path.join(cfg.DIR, 'config.yaml'), 'w') as fh:
        fh.write('{}'.format(cfg))
    if cfg.TRAIN.start_epoch > 0:
        for part in ('encoder', 'decoder'):
            path = os.path.join(cfg.DIR, '{}_epoch_{}.pth'.format(part, cfg.TRAIN.start_epoch))
            assert os.path.exists(path), 'no checkpoint to resume from'
            cfg.MODEL['weights_' + part] = path
    gpus = [int(d.replace('gpu', '')) for d in parse_devices(args.gpus)]
    cfg.TRAIN.batch_size = len(gpus) * cfg.TRAIN.batch_size_per_gpu
    cfg.TRAIN.max_iters = cfg.TRAIN.epoch_iters * cfg.TRAIN.num_epoch
    cfg.TRAIN.running_lr_encoder = cfg.TRAIN.lr_encoder
    cfg.TRAIN.running_lr_decoder = cfg.TRAIN.lr_decoder
    random.seed(cfg.TRAIN.seed)
    torch.manual_seed(cfg.TRAIN.seed)
    run(gpus)
