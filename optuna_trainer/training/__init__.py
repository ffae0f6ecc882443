"""What happens inside one trial's `Trainer.train()`: arguments bound to the trainer (`binding`), the report/prune
callbacks (`callbacks`), the best evaluation's weights (`best_weights`), the trial's model (`models`, `adapters`),
its memory (`memory`) and its failures (`faults`)."""
