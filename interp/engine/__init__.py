"""The edit engine: `apply` (which interventions act at a call and how their edits merge),
`attention` (the attention processors that compute q/k/v/z/pattern sites) and `session` (the hook
session behind `interp.intervene`, `interp.generate` and generation-time capture)."""
