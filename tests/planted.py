"""A planted culture signal with a known answer, shared by the unit-detection and causal-sweep
tests: fixed MLP neurons of one layer get +value at every token of a prompt that contains its
culture's marker token. (Imported by test files; pytest does not collect it.)"""


class Planted:
    """An intervention: +`value` on `units[c]` at `site` for every prompt containing `markers[c]`."""

    def __init__(self, model, site, markers, units, value=10.0):
        self.site, self.markers, self.planted, self.value = site, markers, units, value
        self.ids = None
        # The activation does not carry token ids, so read them off the encoder's input.
        model.encoders["text"].module.register_forward_pre_hook(self._grab, with_kwargs=True)

    def _grab(self, mod, args, kwargs):
        self.ids = args[0] if args else kwargs["input_ids"]

    def apply(self, act):
        out = act.clone()
        for c, tok in self.markers.items():
            rows = (self.ids == tok).any(1)
            for j in self.planted[c]:
                out[rows, :, j] += self.value
        return out


def marker_tokens(model, prompts: dict, base: str) -> dict:
    """Per culture, the first token id of its prompt that no other culture's prompt and not the
    culture-free `base` prompt contains."""
    tok = model.encoders["text"].tokenizer
    ids = {c: set(tok(p)["input_ids"]) for c, p in prompts.items()}
    common = set.intersection(*ids.values()) | set(tok(base)["input_ids"])
    return {c: sorted(ids[c] - common)[0] for c in prompts}
