"""taxonomies, question banks and the images they point at."""
