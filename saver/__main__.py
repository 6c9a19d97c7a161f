"""``python -m saver ...``: what ``torchrun --nproc_per_node N -m saver train ...`` runs in each process."""

from saver.cli import main

main()
