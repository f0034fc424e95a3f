"""One module per system under test, all of the same shape (see ../harness.py)."""
