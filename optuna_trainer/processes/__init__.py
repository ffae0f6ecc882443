"""Processes: the coordinator that keeps the processes of one search in step (`coordinator`, `distributed`),
`optuna-trainer workers` (`launcher`) and what it tells each worker (`worker_env`), and SIGTERM (`signals`)."""
