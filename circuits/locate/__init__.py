"""Where a concept lives: the ΔCA layer scan (`scan`, `ca`), token positions (`tokens`),
unit activations (`acts`), WFS scores and the elbow (`wfs`), culture units in a basis (`units`)."""
