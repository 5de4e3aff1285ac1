"""KFP v2 components: thin, typed wrappers over the shipyard library functions."""
