"""Analysis over training logs and decompositions: compare, layer report, rank sweep."""
