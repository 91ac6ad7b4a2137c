"""The model: a pipeline, its text encoders and the names of its sites.

`layout` (where each encoder architecture keeps its layers) -> `sites` (one site-naming grammar,
resolved to a module) -> `model` (`Model`, `TextEncoder`) -> `folders` (a folder's own JSON files)
-> `loading` (`load`: open a folder) ; `tiny` (random tiny pipelines) and `tokenizer_training`.
Import from the module that defines a name (`interp.model.model.Model`) or from `interp`."""
