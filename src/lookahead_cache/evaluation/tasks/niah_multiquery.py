from ._niah import NeedleInAHaystack


class NiahMultiquery(NeedleInAHaystack):
    """RULER's niah_multiquery: four needles with distinct keys in prose, all four keys asked at once."""

    name = "niah_multiquery"
    description = (
        "Four number needles with distinct keys in prose, all four keys asked at once (RULER niah_multiquery)."
    )
    max_new_tokens = 64
    num_keys = 4
    num_queries = 4
