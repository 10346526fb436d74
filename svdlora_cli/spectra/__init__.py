"""dW and its spectrum: targets, the dW dtype policy, deltas, decompositions, the SVD step."""
