from ._niah import NeedleInAHaystack


class NiahMultivalue(NeedleInAHaystack):
    """RULER's niah_multivalue: four needles with the same key in prose, all four values asked."""

    name = "niah_multivalue"
    description = "Four number needles sharing one key in prose, all four values asked (RULER niah_multivalue)."
    max_new_tokens = 64
    num_values = 4
