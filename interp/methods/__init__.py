"""What a researcher calls: `capture` (read sites in one traced forward), `generation` (generate
with interventions and capture), `patching` (activation patching), `attribution` (DAAM maps and
effect maps), `heatmaps` (image-resolution maps shared with `sae.feature_maps`) and `spans`
(a substring's token positions)."""
