#!/usr/bin/env bash
# The bundled checkpoints, exactly as they were made (docs/training.md): the base, then eleven
# stages of fine-tunes, each stage's StretchySnake and vanilla runs side by side. About eight and
# a half hours on 2 CPU cores; checkpoints/stretchysnake_nano and checkpoints/vanilla_nano are
# runs/ss_ft11 and runs/van_ft11 without train_state.pt.
#
#   bash training/recipes/bundled_nano.sh            # from the repository root
#   DRY_RUN=1 bash training/recipes/bundled_nano.sh  # print the commands instead
set -euo pipefail

run() {
    if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi
}

run python -m video.synthetic --out data/synthetic --clips 2000 --seed 0
NANO="--preset nano --set pos_init=sincos --set pool=mean --set scan_order=temporal_first"
run python -m training.train --flex none --out runs/base_v2 $NANO --data data/synthetic/manifest.csv \
    --render 1600 --epochs 24 --batch-size 16 --workers 0 --seed 0                  # ~40 min
STAGE="--data data/synthetic/manifest.csv --render 1600 --lr 5e-4 --warmup-epochs 0.2 --batch-size 16 --workers 0"
SS="--flex static_tokens --sizes 56,84,112,168,224"
export OMP_NUM_THREADS=1
run python -m training.train $SS --init runs/base_v2 --out runs/ss_ft $STAGE --epochs 5 --seed 1 &
run python -m training.train --flex none --init runs/base_v2 --out runs/van_ft $STAGE --epochs 5 --seed 1; wait    # ~25 min
run python -m training.train $SS --init runs/ss_ft --out runs/ss_ft2 $STAGE --epochs 10 --seed 2 &
run python -m training.train --flex none --init runs/van_ft --out runs/van_ft2 $STAGE --epochs 10 --seed 2; wait  # ~52 min
run python -m training.train $SS --init runs/ss_ft2 --out runs/ss_ft3 $STAGE --epochs 6 --seed 3 &
run python -m training.train --flex none --init runs/van_ft2 --out runs/van_ft3 $STAGE --epochs 6 --seed 3; wait  # ~38 min
run python -m training.train $SS --frames 4,4,8,16,32 --init runs/ss_ft3 --out runs/ss_ft4 $STAGE --epochs 10 --seed 4 &
run python -m training.train --flex none --init runs/van_ft3 --out runs/van_ft4 $STAGE --epochs 10 --seed 4; wait # ~57 min
TINY="--frames 4,4,8,16,32 --also 8x56/28 --also-fraction 0.5"    # half the batches at a 2 x 2 token grid
run python -m training.train $SS $TINY --init runs/ss_ft4 --out runs/ss_ft5 $STAGE --epochs 10 --seed 5 &
run python -m training.train --flex none --init runs/van_ft4 --out runs/van_ft5 $STAGE --epochs 10 --seed 5; wait # ~30 min
run python -m training.train $SS $TINY --init runs/ss_ft5 --out runs/ss_ft6 $STAGE --lr 3e-4 --epochs 20 --seed 6 &
run python -m training.train --flex none --init runs/van_ft5 --out runs/van_ft6 $STAGE --lr 3e-4 --epochs 20 --seed 6; wait # ~62 min
run python -m training.train $SS $TINY --init runs/ss_ft6 --distill-from runs/ss_ft6 --out runs/ss_ft7 $STAGE --lr 2e-4 --epochs 16 --seed 7 &
run python -m training.train --flex none --init runs/van_ft6 --out runs/van_ft7 $STAGE --lr 2e-4 --epochs 16 --seed 7; wait # ~51 min
run python -m training.train $SS $TINY --init runs/ss_ft7 --distill-from runs/ss_ft7 --out runs/ss_ft8 $STAGE --lr 1e-4 --epochs 10 --seed 8 &
run python -m training.train --flex none --init runs/van_ft7 --out runs/van_ft8 $STAGE --lr 1e-4 --epochs 10 --seed 8; wait # ~38 min
FOUR="--frames 4,4,4,4,8,16,32 --also 8x56/28 --also-fraction 0.4"  # 4 frames in 4 of every 7 static-tokens batches
run python -m training.train $SS $FOUR --init runs/ss_ft8 --distill-from runs/ss_ft8 --out runs/ss_ft9 $STAGE --lr 1e-4 --epochs 16 --stop-after 11 --seed 9 &
run python -m training.train --flex none --init runs/van_ft8 --out runs/van_ft9 $STAGE --lr 1e-4 --epochs 16 --stop-after 11 --seed 9; wait # ~38 min
run python -m training.train $SS $FOUR --init runs/ss_ft9 --distill-from runs/ss_ft9 --out runs/ss_ft10 $STAGE --lr 1e-4 --epochs 8 --seed 10 &
run python -m training.train --flex none --init runs/van_ft9 --out runs/van_ft10 $STAGE --lr 1e-4 --epochs 8 --seed 10; wait # ~38 min
run python -m training.train $SS $FOUR --init runs/ss_ft10 --distill-from runs/ss_ft10 --out runs/ss_ft11 $STAGE --lr 5e-5 --epochs 12 --seed 11 &
run python -m training.train --flex none --init runs/van_ft10 --out runs/van_ft11 $STAGE --lr 5e-5 --epochs 12 --seed 11; wait # ~45 min
