"""Drivers: training (`train.py`), reconstruction of a test set (`reconstruct.py`) and the bundled demo (`demo.py`)."""
