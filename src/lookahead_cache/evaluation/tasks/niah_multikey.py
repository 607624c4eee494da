from ._niah import NeedleInAHaystack


class NiahMultikey(NeedleInAHaystack):
    """RULER's niah_multikey_1: four needles with distinct keys in prose, one asked; the others are distractors."""

    name = "niah_multikey"
    description = "Four number needles with distinct keys in prose, one key asked (RULER niah_multikey_1)."
    max_new_tokens = 32
    num_keys = 4
