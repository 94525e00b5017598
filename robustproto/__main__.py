"""``python -m robustproto`` (e.g. under ``torchrun --nproc_per_node 2 -m robustproto train ...``)."""

from .cli import main

if __name__ == "__main__":
    main()
