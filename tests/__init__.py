"""The test suite (a package, so that test modules share ``tests.conftest``'s network configs by import)."""
