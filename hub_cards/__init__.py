"""Model-card templates for the Hub, rendered by `lookahead_cache.adapters.cards`."""
