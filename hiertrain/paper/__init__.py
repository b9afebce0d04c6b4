"""compatibility with the paper's own files: manifest, image paths, its metric."""
