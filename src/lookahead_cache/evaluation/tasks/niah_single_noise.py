from ._niah import NeedleInAHaystack


class NiahSingleNoise(NeedleInAHaystack):
    """RULER's niah_single_1 (passkey retrieval): one 7-digit number in the repeated noise sentences."""

    name = "niah_single_noise"
    description = "One 7-digit number needle in a haystack of repeated noise sentences (RULER niah_single_1)."
    max_new_tokens = 32
    haystack = "noise"
