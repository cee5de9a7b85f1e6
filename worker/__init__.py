"""traind workers: pull jobs from RQ queues and train them with per-epoch, fenced, atomic checkpoints."""
