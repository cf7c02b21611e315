"""Score networks. They map ``(x, labels) -> output`` and know nothing about SDEs."""
