"""flowctl's tests; the code they share is in tests/support."""
