#!/usr/bin/env bash
# One machine, several GPUs: one training process per GPU (DistributedDataParallel over NCCL).
#
# --batch is the global batch: each of the N processes trains on batch/N images per step, so a run on 4 GPUs
# makes the same updates as one process with the same --batch (and, with --sync-bn, the same BatchNorm
# statistics). Only rank 0 prints and writes runs/train/<name>/.
set -euo pipefail
DATA=${1:?usage: examples/multi_gpu.sh DATA_FOLDER}

# The short form: pigeon starts torchrun for you, one process per listed GPU.
pigeon train --data "$DATA" --model pigeon-m --epochs 90 --batch 1024 --device 0,1,2,3 --sync-bn --name xrays

# The same run, started by torchrun itself (what the short form does):
#   torchrun --standalone --nproc-per-node 4 -m pigeon train --data "$DATA" --model pigeon-m --epochs 90 \
#       --batch 1024 --device cuda --sync-bn --name xrays
#
# A run that stopped (a process died, the job was pre-empted) continues after its last whole epoch, with any
# number of processes:
#   pigeon train --resume runs/train/xrays --device 0,1
