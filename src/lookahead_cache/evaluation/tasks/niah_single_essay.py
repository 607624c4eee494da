from ._niah import NeedleInAHaystack


class NiahSingleEssay(NeedleInAHaystack):
    """RULER's niah_single_2 (vanilla needle in a haystack): one 7-digit number in prose."""

    name = "niah_single_essay"
    description = "One 7-digit number needle in a prose haystack (RULER niah_single_2)."
    max_new_tokens = 32
