"""The decoding loop: one round's steps, its state, the KV slots, verification, stops and the stats."""
