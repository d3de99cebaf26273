"""The transformers glue: generate() and its options, checks, processors, placement and model support."""
