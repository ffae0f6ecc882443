"""Ready search classes for the trainers users have besides `Trainer`: each is `OptunaSearchMixin` over that
trainer and `OptunaSearchArguments` over its arguments class. `seq2seq` needs only transformers; `trl` and
`sentence_transformers` import their package when imported themselves (optional extras)."""
