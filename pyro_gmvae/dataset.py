# Temporary: replaced by the split of data.py.
from .data import Dataset, Scaler, check_min_rows, validate_array  # noqa: F401
