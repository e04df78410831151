"""Training data: manifest, frame selection, split, download and the torch Dataset."""
