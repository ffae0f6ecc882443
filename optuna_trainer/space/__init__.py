"""What is searched and how it is scored: the declarative space (`search_space`), samplers and pruners built from
names (`samplers`, `pruners`, `_registry`), the objective (`objective`) and the step values are reported at
(`budget`)."""
