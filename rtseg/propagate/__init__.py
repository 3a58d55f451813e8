"""Label propagation: k-means over global image features spreads a few labels to many images."""
