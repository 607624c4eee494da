from ._niah import NeedleInAHaystack


class NiahSingleUuid(NeedleInAHaystack):
    """RULER's niah_single_3: one UUID in prose, 36 characters to copy exactly."""

    name = "niah_single_uuid"
    description = "One UUID needle in a prose haystack (RULER niah_single_3)."
    max_new_tokens = 64
    value_kind = "uuids"
