"""The main job: the whole culture analysis on a pipeline, written up as a report (coordinator-owned)."""
