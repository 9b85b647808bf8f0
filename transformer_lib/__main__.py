"""Command line: ``python -m transformer_lib train|translate|evaluate``.

python -m transformer_lib train --preset multi30k_cpu --out runs/multi30k_cpu
python -m transformer_lib train --out runs/multi30k_cpu --resume
torchrun --standalone --nproc_per_node=2 -m transformer_lib train --preset tiny --out runs/tiny_ddp   # data-parallel
echo "Ein Hund läuft durch den Schnee." | python -m transformer_lib translate --checkpoint release/multi30k_de_en.pt
python -m transformer_lib evaluate --checkpoint release/multi30k_de_en.pt --split test_2016_flickr
"""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
