"""The culture data and its evaluation: `culturebench` (the 15 cultures, prompt-pair records, the
loader and the bundled pairs), `judges` (images -> probabilities over the cultures), `spans`
(token spans of a record) and `cli` (the `evaluate` command).

Nothing is imported here: `from circuits.data import culturebench` loads only what it names."""
