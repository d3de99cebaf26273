"""Token trees: shapes, the tree round, one target pass over a tree and its exact verification."""
