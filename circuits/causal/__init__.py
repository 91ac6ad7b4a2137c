"""What the units do: masking vs random controls (`validate`, `controls`), culture × culture
specificity (`specificity`), the exhaustive layer sweep (`sweep`), the zero-training amplifier
(`amplify`) and the trained layer enhancer (`enhancer`)."""
