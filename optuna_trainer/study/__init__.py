"""The study and its records: storages opened from URLs (`storage`), the claim locks workers share (`claims`), the
trials as the search counts them (`bookkeeping`) and the user attributes it writes on them (`attrs`)."""
