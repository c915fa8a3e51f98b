"""thinserve's clients: terminals that show a thinserve screen."""
