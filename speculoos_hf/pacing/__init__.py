"""Pacing: how many tokens to draft, from measured pass times and acceptance (the cost model)."""
