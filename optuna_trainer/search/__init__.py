"""The search and its trial: settings resolved once (`settings`), the study prepared (`prepare`), the study loop
(`loop`), one trial (`trial`) and what a search does with each trial's outcome (`search`). Private: the public face
is `optuna_trainer.OptunaTrainer` / `OptunaSearchMixin`."""
