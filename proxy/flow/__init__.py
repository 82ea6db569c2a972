"""One request owned from admission to its record: the director and its phases."""
